"""Quantization of linear layers computed remotely: the client's side of ``x @ W`` and ``g @ W.T``.

Weights: symmetric, per output channel (column of ``W``), ``W ~= q * scale[None, :]``.
Activations and gradients: dynamic, per row (per token), unsigned with a zero point,
``x ~= (x_q - z[:, None]) * s[:, None]``. The worker multiplies the integer codes; the client
removes the zero-point term and rescales. Static per-tensor scales are not offered: one outlier
token then flattens every other row, and gradients blow up.

Forward:  ``x @ W  ~= s * s_w * (x_q @ q - z * colsum(q))``
Backward: ``g @ W.T = (g * s_w) @ q.T  ~= s' * (g'_q @ q.T - z' * rowsum(q))``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.quantization.quantizer import UniformQuantizer

__all__ = ["QuantizedWeight", "quantize_rows", "forward_output", "backward_input", "backward_output"]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """``W`` (d_in, d_out) as integer codes ``q`` and one scale per output channel."""

    q: np.ndarray
    scale: np.ndarray
    n_bits: int

    @classmethod
    def from_float(cls, weight: np.ndarray, n_bits: int = 8) -> QuantizedWeight:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.ndim != 2:
            raise ValueError(f"a linear weight is 2-D (d_in, d_out), got shape {weight.shape}")
        quantizer = UniformQuantizer.calibrate(weight, n_bits, signed=True, symmetric=True, axis=1)
        return cls(np.ascontiguousarray(quantizer.quantize(weight, warn=False)), quantizer.scale, n_bits)

    @property
    def col_sums(self) -> np.ndarray:
        """(d_out,) sums of the codes over the input axis: the forward zero-point correction."""
        return self.q.sum(axis=0)

    @property
    def row_sums(self) -> np.ndarray:
        """(d_in,) sums of the codes over the output axis: the backward zero-point correction."""
        return self.q.sum(axis=1)

    def dequantize(self) -> np.ndarray:
        return self.q * self.scale[None, :]


def quantize_rows(x: np.ndarray, n_bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row dynamic unsigned codes: (codes (T, d) int64, scales (T,), zero points (T,))."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (tokens, features) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("activations or gradients contain NaN or inf; lower the learning rate or check the loss")
    quantizer = UniformQuantizer.calibrate(x, n_bits, axis=0)
    return np.ascontiguousarray(quantizer.quantize(x, warn=False)), quantizer.scale, quantizer.zero_point


def forward_output(
    acc: np.ndarray, scale: np.ndarray, zero: np.ndarray, weight_scale: np.ndarray, col_sums: np.ndarray
) -> np.ndarray:
    """Float ``x @ W`` from the integer product ``x_q @ q``."""
    centred = np.asarray(acc, dtype=np.float64) - zero[:, None] * col_sums[None, :]
    return centred * scale[:, None] * weight_scale[None, :]


def backward_input(g: np.ndarray, weight_scale: np.ndarray) -> np.ndarray:
    """The gradient rows to quantize for ``g @ W.T``: the weight scales folded into ``g``."""
    return np.asarray(g, dtype=np.float64) * weight_scale[None, :]


def backward_output(acc: np.ndarray, scale: np.ndarray, zero: np.ndarray, row_sums: np.ndarray) -> np.ndarray:
    """Float ``g @ W.T`` from the integer product ``g'_q @ q.T``."""
    return (np.asarray(acc, dtype=np.float64) - zero[:, None] * row_sums[None, :]) * scale[:, None]
