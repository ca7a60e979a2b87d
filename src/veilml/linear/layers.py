"""What a worker publishes about the layers it serves, and how a request names a matrix.

Each layer is served in two directions: ``forward`` multiplies by the quantized weight ``q``,
``backward`` by ``q.T``. :class:`LayerInfo` is the public description a client needs to quantize,
correct and rescale (``GET /layers`` sends one per layer). :func:`check_setup_shape` is the client's check that
a backend's setup for a matrix describes the matrix the client expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.linear.base import MatrixSpec

__all__ = ["ALL", "DIRECTIONS", "LayerInfo", "check_setup_shape"]

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
