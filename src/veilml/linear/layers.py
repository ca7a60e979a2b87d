"""What a worker publishes about the layers it serves, and how a request names a matrix.

Each layer is served in two directions: ``forward`` multiplies by the quantized weight ``q``,
``backward`` by ``q.T``. :class:`LayerInfo` is the public description a client needs to quantize,
correct and rescale (``GET /layers`` sends one per layer). :func:`check_setup_shape` is the client's check that
a backend's setup for a matrix describes the matrix the client expects.

:func:`layers_fingerprint` is the one hash of a worker's published layers: the worker publishes it (``GET /health``,
``GET /layers``), and a client that holds the base weights itself computes it from them
(:meth:`LayerInfo.of` on its own quantized weights) to refuse a worker serving another model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.linear.base import MatrixSpec
from veilml.quantization import QuantizedWeight

__all__ = ["ALL", "DIRECTIONS", "LayerInfo", "check_setup_shape", "layers_fingerprint"]

DIRECTIONS = ("forward", "backward")
ALL = "*"  # layer and direction of evaluation keys that serve every matrix of a worker


def check_setup_shape(backend: str, name: str, spec: MatrixSpec, rows: int, cols: int, input_bits: int) -> None:
    """Refuse a worker's ``backend`` setup for matrix ``name`` unless it has ``spec``'s shape and input bits."""
    if (rows, cols, input_bits) != (spec.rows, spec.cols, spec.input_bits):
        raise ValueError(
            f"the worker's {backend} setup for {name!r} is for a ({rows}, {cols}) matrix with {input_bits}-bit "
            f"inputs, but the client expects {spec}"
        )


@dataclass(frozen=True, eq=False)
class LayerInfo:
    """Public description of one remote layer: enough for the client to correct and rescale.

    ``weight_scale``, ``col_sums`` and ``row_sums`` are aggregates of the quantized weight (one
    number per output channel or input feature), not the weight itself.
    """

    name: str
    d_in: int
    d_out: int
    input_bits: int
    weight_bits: int
    weight_scale: np.ndarray
    col_sums: np.ndarray
    row_sums: np.ndarray
    bias: np.ndarray | None = None

    @classmethod
    def of(cls, name: str, quantized: QuantizedWeight, input_bits: int, bias: np.ndarray | None = None) -> LayerInfo:
        """What a worker publishes about ``quantized`` (its weight, quantized) served with ``input_bits``-bit inputs."""
        return cls(
            name,
            quantized.q.shape[0],
            quantized.q.shape[1],
            input_bits,
            quantized.n_bits,
            quantized.scale,
            quantized.col_sums,
            quantized.row_sums,
            None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1),
        )

    def spec(self, direction: str) -> MatrixSpec:
        if direction == "forward":
            return MatrixSpec(self.d_in, self.d_out, self.input_bits)
        return MatrixSpec(self.d_out, self.d_in, self.input_bits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "input_bits": self.input_bits,
            "weight_bits": self.weight_bits,
            "weight_scale": self.weight_scale.tolist(),
            "col_sums": self.col_sums.tolist(),
            "row_sums": self.row_sums.tolist(),
            "bias": None if self.bias is None else self.bias.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        return cls(
            d["name"],
            int(d["d_in"]),
            int(d["d_out"]),
            int(d["input_bits"]),
            int(d["weight_bits"]),
            np.asarray(d["weight_scale"], dtype=np.float64),
            np.asarray(d["col_sums"], dtype=np.int64),
            np.asarray(d["row_sums"], dtype=np.int64),
            None if d.get("bias") is None else np.asarray(d["bias"], dtype=np.float64),
        )


def layers_fingerprint(backend: str, layers: Mapping[str, LayerInfo]) -> str:
    """The fingerprint of ``layers`` served on ``backend``: 32 hex characters of a SHA-256 of their public description.

    The same weights, bits and backend give the same fingerprint, so a worker restarted with the same weights keeps
    it, and a client holding the base weights computes it without asking the worker.
    """
    described = {name: info.to_dict() for name, info in layers.items()}
    text = json.dumps([str(backend), described], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
