"""Greedy generation with a model whose frozen projections run on workers, and task accuracy by exact match.

:func:`private_generate` is ``model.generate`` through the same executor that trained the adapters
(every new token's projections go to the worker, encrypted with ``bfv``), timed, with the bytes it
exchanged. :func:`task_accuracy` greedily answers each prompt of a list of
:class:`~veilml.models.lora.task.TaskExample` and counts the answers equal to the expected ones. Both
decode greedily, so the ``bfv`` and ``clear`` backends (the same integers) give the same tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from veilml.models.lora.batching import encode_text, pad_id
from veilml.models.lora.remote_linear import RemoteLinear
from veilml.models.lora.task import TaskExample

__all__ = ["GenerationResult", "TaskAccuracy", "greedy_generate", "private_generate", "task_accuracy"]


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`private_generate` produced and what it cost."""

    prompt: str
    text: str  # the generated continuation, special tokens dropped
    new_tokens: int
    seconds: float
    bytes_sent: int  # to the workers, during this generation
    bytes_received: int

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class TaskAccuracy:
    """Exact-match accuracy of greedy answers: ``correct`` of ``total``, and every answer given."""

    correct: int
    total: int
    predictions: list[str]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _executors(model: nn.Module) -> list[Any]:
    """The distinct executors of the model's remote layers."""
    found: dict[int, Any] = {}
    for module in model.modules():
        if isinstance(module, RemoteLinear):
            found.setdefault(id(module.executor), module.executor)
    return list(found.values())


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids, end-of-text and padding removed) of ``prompts``, generated as one
    left-padded batch."""
    encoded = [encode_text(tokenizer, prompt) for prompt in prompts]
    width, pad = max(len(ids) for ids in encoded), pad_id(tokenizer)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    eos = getattr(tokenizer, "eos_token_id", None)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    finally:
        model.train(was_training)
    continuations = []
    for row in output[:, width:].tolist():
        stop = row.index(eos) if eos is not None and eos in row else len(row)
        continuations.append(row[:stop])
    return continuations


def private_generate(model: nn.Module, tokenizer: Any, executor: Any, prompt: str, max_new_tokens: int = 32) -> GenerationResult:
    """Greedy ``model.generate`` of ``prompt``, every frozen projection computed by ``executor``'s workers.

    ``model`` is one prepared by :func:`~veilml.models.lora.private.private_model` (or
    ``outsource_linear_layers``) with ``executor``; a model whose layers run elsewhere, or locally, is
    refused rather than silently run on the wrong machine.
    """
    executors = _executors(model)
    if not executors:
        raise ValueError("the model computes its projections locally; prepare it with private_model(model, executor)")
    if any(found is not executor for found in executors):
        raise ValueError("the model's remote layers run on another executor than the one given")
    sent, received = executor.bytes_sent, executor.bytes_received
    started = time.perf_counter()
    (tokens,) = greedy_generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - started
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return GenerationResult(prompt, text, len(tokens), seconds, executor.bytes_sent - sent, executor.bytes_received - received)


def task_accuracy(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[TaskExample],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> TaskAccuracy:
    """Greedy answers to ``examples``' prompts (their first line, stripped) against the expected answers.

    ``max_new_tokens`` defaults to the longest expected answer's length in tokens, plus its end of text.
    """
    if not examples:
        raise ValueError("no example to score")
    if max_new_tokens is None:
        max_new_tokens = max(len(encode_text(tokenizer, " " + e.answer)) for e in examples) + 1
    predictions: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        for tokens in greedy_generate(model, tokenizer, [e.prompt for e in chunk], max_new_tokens=max_new_tokens):
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            predictions.append(text.split("\n", 1)[0].strip())
    correct = sum(prediction == example.answer for prediction, example in zip(predictions, examples))
    return TaskAccuracy(correct, len(examples), predictions)
