"""Range and bit-width inference: sound per-element integer bounds of every node.

Bounds come from the declared input ranges only (never from data), so they hold for every input
the graph accepts. The lowering hints concrete with the resulting bit widths, which makes the
compiled circuit correct beyond the inputset it was compiled with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veilml.compiler.ir import Graph, IRError, Node, Ops, lut_index, round_bits

__all__ = ["Range", "bit_width", "infer_ranges"]


def bit_width(low: int, high: int) -> int:
    """Bits of the smallest (signed if ``low < 0``) integer type holding ``[low, high]``."""
    low, high = int(low), int(high)
    if low >= 0:
        return max(1, high.bit_length())
    return 1 + max((-low - 1).bit_length(), max(high, 0).bit_length())


@dataclass(frozen=True, eq=False)
class Range:
    """Per-element inclusive bounds of a node's value."""

    low: np.ndarray
    high: np.ndarray

    @property
    def signed(self) -> bool:
        return bool(np.min(self.low) < 0)

    @property
    def bit_width(self) -> int:
        return bit_width(np.min(self.low), np.max(self.high))


def _lut_range(node: Node, x: Range) -> Range:
    table, offset = node.arg
    rows = table if table.ndim == 2 else np.broadcast_to(table, (node.size, table.size))
    lo_idx = np.broadcast_to(lut_index(x.low, offset, rows.shape[1]), (node.size,))
    hi_idx = np.broadcast_to(lut_index(x.high, offset, rows.shape[1]), (node.size,))
    low = np.array([row[a : b + 1].min() for row, a, b in zip(rows, lo_idx, hi_idx)], dtype=np.int64)
    high = np.array([row[a : b + 1].max() for row, a, b in zip(rows, lo_idx, hi_idx)], dtype=np.int64)
    return Range(low, high)


def _round_range(node: Node, x: Range) -> Range:
    lsbs, mode = node.arg
    if lsbs >= x.bit_width:
        raise IRError(f"ROUND removes {lsbs} bit(s) of a {x.bit_width}-bit value; remove fewer bits than the value has")
    return Range(round_bits(x.low, lsbs, mode), round_bits(x.high, lsbs, mode))


def _matmul_range(node: Node, x: Range) -> Range:
    pos, neg = np.maximum(node.arg, 0), np.minimum(node.arg, 0)
    return Range(x.low @ pos + x.high @ neg, x.high @ pos + x.low @ neg)


def _mul_range(a: Range, c: Range) -> Range:
    products = (a.low * c.low, a.high * c.low)  # c is a constant: c.low == c.high
    return Range(np.minimum(*products), np.maximum(*products))


def _assume_range(node: Node, x: Range) -> Range:
    low, high = np.maximum(x.low, node.arg[0]), np.minimum(x.high, node.arg[1])
    if np.any(low > high):
        raise IRError("ASSUME range does not intersect the inferred range")
    return Range(low, high)


RULES: dict[Ops, Callable[..., Range]] = {
    Ops.INPUT: lambda n: Range(n.arg[1].astype(np.int64), n.arg[2].astype(np.int64)),
    Ops.CONST: lambda n: Range(n.arg, n.arg),
    Ops.GATHER: lambda n, x: Range(x.low[list(n.arg)], x.high[list(n.arg)]),
    Ops.ADD: lambda n, a, b: Range(a.low + b.low, a.high + b.high),
    Ops.SUB: lambda n, a, b: Range(a.low - b.high, a.high - b.low),
    Ops.MUL: lambda n, a, c: _mul_range(a, c),
    Ops.MATMUL: _matmul_range,
    Ops.SUM: lambda n, x: Range(x.low.sum(keepdims=True), x.high.sum(keepdims=True)),
    Ops.CMP: lambda n, x, c: Range(np.zeros(n.size, np.int64), np.ones(n.size, np.int64)),
    Ops.LUT: _lut_range,
    Ops.ROUND: _round_range,
    Ops.ASSUME: _assume_range,
    Ops.OUTPUT: lambda n, x: x,
}


def infer_ranges(graph: Graph) -> list[Range]:
    """Bounds of every node, in node order."""
    ranges: list[Range] = []
    for node in graph.nodes:
        found = RULES[node.op](node, *(ranges[s] for s in node.src))
        size = node.size
        ranges.append(Range(np.broadcast_to(found.low, (size,)), np.broadcast_to(found.high, (size,))))
    return ranges
