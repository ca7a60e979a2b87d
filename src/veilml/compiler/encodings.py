"""What the client encrypts: an encoding of the quantized input, applied before encryption.

The encoding is part of a compiled model (a model compiled for thermometer inputs cannot take raw
ones). Both encodings here depend only on the input's shape and precision, never on the model's
parameters: the encoding itself tells the client nothing about the model (the quantizer applied
before it is a separate, per-model object).

- ``identity``: the quantized value itself, one ciphertext per feature.
- ``thermometer``: bit ``k`` of feature ``f`` is ``[q_f >= qmin + k]`` for ``k = 1 .. 2**n_bits - 1``.
  Every comparison ``q_f >= t`` is then one of the encrypted bits: comparisons cost nothing in FHE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["InputEncoding"]


@dataclass(frozen=True)
class InputEncoding:
    kind: Literal["identity", "thermometer"]
    n_features: int
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        if self.kind not in ("identity", "thermometer"):
            raise ValueError(f"unknown input encoding {self.kind!r}; use 'identity' or 'thermometer'")
        if self.qmax <= self.qmin:
            raise ValueError("an input encoding needs qmax > qmin")

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    @property
    def size(self) -> int:
        """Encrypted integers per sample."""
        return self.n_features if self.kind == "identity" else self.n_features * (self.levels - 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Declared per-element range of the encoded vector."""
        if self.kind == "identity":
            return np.full(self.size, self.qmin), np.full(self.size, self.qmax)
        return np.zeros(self.size, np.int64), np.ones(self.size, np.int64)

    def column(self, feature: int, code: int) -> int:
        """Thermometer position of the bit ``[q_feature >= code]`` (``qmin < code <= qmax``)."""
        if self.kind != "thermometer":
            raise ValueError("column() is defined for thermometer encodings only")
        if not self.qmin < code <= self.qmax:
            raise ValueError(f"code {code} has no thermometer bit; it must be in ({self.qmin}, {self.qmax}]")
        return feature * (self.levels - 1) + (code - self.qmin - 1)

    def encode(self, q: np.ndarray) -> np.ndarray:
        """Encoded batch (n_samples, size) of quantized inputs q (n_samples, n_features)."""
        q = np.asarray(q, dtype=np.int64)
        if q.ndim != 2 or q.shape[1] != self.n_features:
            raise ValueError(f"expected quantized inputs of shape (n, {self.n_features}), got {q.shape}")
        if self.kind == "identity":
            return q
        codes = np.arange(self.qmin + 1, self.qmax + 1)
        bits = q[:, :, None] >= codes[None, None, :]
        return bits.reshape(q.shape[0], -1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputEncoding:
        return cls(**d)
