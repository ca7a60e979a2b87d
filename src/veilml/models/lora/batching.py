"""Tokenizer-aware batches of prompt/answer examples, for transformers' ``Trainer`` or :class:`LoraTrainer`.

An example becomes ``input_ids`` = prompt tokens + answer tokens + end of text, with ``labels`` equal to
``input_ids`` on the answer and its end-of-text token and ``-100`` on the prompt, so the loss (and the eval
loss) measures the answers alone. Prompt and answer are tokenized apart, so the prompt's tokens are exactly
those a generation starts from. Works with a Hugging Face tokenizer (no special tokens added) and with the
:class:`~veilml.models.lora.tiny.ByteTokenizer` of the tiny models.

- :func:`task_features`: one dict of token lists per example (a ``Trainer``'s ``train_dataset``);
- :class:`TaskCollator`: pads a list of features into tensors (the ``Trainer``'s ``data_collator``);
- :func:`task_batches`: ready batches, for :class:`~veilml.models.lora.trainer.LoraTrainer` or a loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from veilml.models.lora.task import TaskExample

__all__ = ["IGNORE_INDEX", "TaskCollator", "encode_text", "pad_id", "task_batches", "task_features"]

#: The label that the causal-LM loss skips (prompt and padding positions).
IGNORE_INDEX = -100


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids, without the special tokens a Hugging Face tokenizer may add around it."""
    from veilml.models.lora.tiny import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer.encode(text, add_special_tokens=False))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding token, else its end-of-text token."""
    token = getattr(tokenizer, "pad_token_id", None)
    token = token if token is not None else getattr(tokenizer, "eos_token_id", None)
    if token is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a padding nor an end-of-text token; set pad_token_id")
    return int(token)


def task_features(
    examples: Sequence[TaskExample], tokenizer: Any, *, max_length: int | None = None, answer_only: bool = True
) -> list[dict[str, list[int]]]:
    """One ``{"input_ids", "labels"}`` dict of token lists per example.

    ``answer_only``: the labels skip the prompt (-100), so the loss is the answers'; False labels every
    token (the model also learns the notes' language). ``max_length``: refuse (ValueError) an example
    longer than that many tokens instead of cutting its answer off; None takes every length.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    features = []
    for example in examples:
        prompt = encode_text(tokenizer, example.prompt)
        answer = encode_text(tokenizer, " " + example.answer) + ([] if eos is None else [int(eos)])
        ids = prompt + answer
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"an example has {len(ids)} tokens, more than max_length={max_length}: {example.text!r}")
        labels = [IGNORE_INDEX] * len(prompt) + answer if answer_only else list(ids)
        features.append({"input_ids": ids, "labels": labels})
    return features


@dataclass
class TaskCollator:
    """Right-pads features from :func:`task_features` into ``input_ids``, ``attention_mask`` and ``labels``
    tensors (``pad_token_id`` in the inputs, ``-100`` in the labels).

    ``pad_to``: pad every batch to this many tokens (equal shapes whatever the batch), else to its longest.
    """

    pad_token_id: int
    pad_to: int | None = None

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("a batch needs at least one example")
        longest = max(len(f["input_ids"]) for f in features)
        width = longest if self.pad_to is None else self.pad_to
        if longest > width:
            raise ValueError(f"an example has {longest} tokens, more than pad_to={width}")
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature.get("labels", feature["input_ids"]), dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def task_batches(
    examples: Sequence[TaskExample],
    tokenizer: Any,
    *,
    batch_size: int = 4,
    pad_to: int | None = None,
    drop_last: bool = False,
    answer_only: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """``examples`` in order, as padded batches of ``batch_size`` (see :class:`TaskCollator`; ``answer_only``
    as :func:`task_features`); ``drop_last`` drops a final incomplete batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    features = task_features(examples, tokenizer, max_length=pad_to, answer_only=answer_only)
    collate = TaskCollator(pad_id(tokenizer), pad_to)
    stop = len(features) - len(features) % batch_size if drop_last else len(features)
    return [collate(features[i : i + batch_size]) for i in range(0, stop, batch_size)]
