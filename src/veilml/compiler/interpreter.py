"""The numpy interpreter: the reference meaning of every IR op.

This is ``fhe="disable"``: it computes, on a batch, exactly the integers the compiled FHE circuit
computes (up to the circuit's configured error probability).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from veilml.compiler.ir import CMP_FUNCTIONS, Graph, IRError, Node, Ops, lut_index, round_bits

__all__ = ["SEMANTICS", "evaluate"]


def _lut(node: Node, x: np.ndarray) -> np.ndarray:
    table, offset = node.arg
    index = lut_index(x, offset, table.shape[-1])
    if table.ndim == 2:  # one table per element
        return table[np.arange(node.size), index]
    return table[index]


def _assume(node: Node, x: np.ndarray) -> np.ndarray:
    low, high = node.arg
    if np.any(x < low) or np.any(x > high):
        raise IRError("a value broke an ASSUME range: the lowering that produced it is wrong")
    return x


SEMANTICS: dict[Ops, Callable[..., np.ndarray]] = {
    Ops.CONST: lambda n: n.arg[None, :],
    Ops.GATHER: lambda n, x: x[:, list(n.arg)],
    Ops.ADD: lambda n, a, b: a + b,
    Ops.SUB: lambda n, a, b: a - b,
    Ops.MUL: lambda n, a, c: a * c,
    Ops.MATMUL: lambda n, x: x @ n.arg,
    Ops.SUM: lambda n, x: x.sum(axis=1, keepdims=True),
    Ops.CMP: lambda n, x, c: CMP_FUNCTIONS[n.arg](x, c).astype(np.int64),
    Ops.LUT: _lut,
    Ops.ROUND: lambda n, x: round_bits(x, *n.arg),
    Ops.ASSUME: _assume,
    Ops.OUTPUT: lambda n, x: x,
}


def _check_input(node: Node, value: Any) -> np.ndarray:
    name, low, high = node.arg
    value = np.asarray(value)
    if value.ndim == 1:
        value = value[None, :]
    if value.ndim != 2 or value.shape[1] != node.size:
        raise ValueError(f"input {name!r} must have shape (n_samples, {node.size}), got {value.shape}")
    if value.dtype.kind not in "iub":
        raise TypeError(f"input {name!r} must hold integers, got dtype {value.dtype}")
    value = value.astype(np.int64)
    bad = (value < low) | (value > high)
    if np.any(bad):
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"input {name!r}[{row}, {col}] = {value[row, col]} is outside its declared range "
            f"[{low[col]}, {high[col]}]; quantize the data with the model's input quantizer first"
        )
    return value


def evaluate(graph: Graph, inputs: Sequence[Any] | Mapping[str, Any]) -> list[np.ndarray]:
    """Run ``graph`` on a batch; ``inputs`` are (n_samples, size) integer arrays, one per INPUT."""
    names = graph.input_names()
    if isinstance(inputs, Mapping):
        missing = set(names) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}; the graph takes {names}")
        inputs = [inputs[name] for name in names]
    if len(inputs) != len(names):
        raise ValueError(f"the graph takes {len(names)} input(s) {names}, got {len(inputs)}")
    feed = iter(inputs)
    values: list[np.ndarray] = []
    for node in graph.nodes:
        if node.op is Ops.INPUT:
            values.append(_check_input(node, next(feed)))
        else:
            values.append(SEMANTICS[node.op](node, *(values[s] for s in node.src)))
    return [values[i] for i in graph.outputs]
