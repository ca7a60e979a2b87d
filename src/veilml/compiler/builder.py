"""Building IR graphs node by node: :class:`GraphBuilder`, verified when built."""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.compiler.ir import Graph, IRError, Node, Ops
from veilml.compiler.spec import verify_graph

__all__ = ["GraphBuilder"]


class GraphBuilder:
    """Builds a graph node by node; each method returns the new node's index."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def _add(self, op: Ops, src: tuple[int, ...], arg: Any, size: int) -> int:
        self.nodes.append(Node(op, tuple(int(s) for s in src), arg, int(size)))
        return len(self.nodes) - 1

    def size(self, node: int) -> int:
        return self.nodes[node].size

    def input(self, name: str, low: Any, high: Any) -> int:
        low, high = np.asarray(low, dtype=np.int64).ravel(), np.asarray(high, dtype=np.int64).ravel()
        return self._add(Ops.INPUT, (), (name, low, high), low.size)

    def const(self, values: Any) -> int:
        values = np.asarray(values)
        if values.dtype.kind not in "iub":
            if not np.all(values == np.round(values)):
                raise IRError("IR constants must be integers")
        values = np.asarray(values, dtype=np.int64).ravel()
        return self._add(Ops.CONST, (), values, values.size)

    def gather(self, x: int, indices: Any) -> int:
        indices = tuple(int(k) for k in np.asarray(indices).ravel())
        return self._add(Ops.GATHER, (x,), indices, len(indices))

    def _binary(self, op: Ops, a: int, b: int, arg: Any = None) -> int:
        return self._add(op, (a, b), arg, max(self.size(a), self.size(b)))

    def add(self, a: int, b: int) -> int:
        return self._binary(Ops.ADD, a, b)

    def sub(self, a: int, b: int) -> int:
        return self._binary(Ops.SUB, a, b)

    def mul(self, x: int, c: int) -> int:
        return self._binary(Ops.MUL, x, c)

    def cmp(self, x: int, c: int, predicate: str) -> int:
        return self._binary(Ops.CMP, x, c, predicate)

    def matmul(self, x: int, matrix: Any) -> int:
        matrix = np.asarray(matrix)
        if matrix.dtype.kind not in "iub" and not np.all(matrix == np.round(matrix)):
            raise IRError("MATMUL matrices must be integers")
        matrix = np.ascontiguousarray(matrix, dtype=np.int64)
        if matrix.ndim != 2:
            raise IRError(f"MATMUL takes a 2-D matrix, got shape {matrix.shape}")
        return self._add(Ops.MATMUL, (x,), matrix, matrix.shape[1])

    def sum(self, x: int) -> int:
        return self._add(Ops.SUM, (x,), None, 1)

    def lut(self, x: int, table: Any, offset: int = 0) -> int:
        """``table[clip(x - offset)]`` per element; a 2-D ``table`` holds one table (row) per element."""
        table = np.asarray(table, dtype=np.int64)
        table = np.ascontiguousarray(table if table.ndim == 2 else table.ravel())
        return self._add(Ops.LUT, (x,), (table, int(offset)), self.size(x))

    def round(self, x: int, lsbs: int, mode: str = "round") -> int:
        return self._add(Ops.ROUND, (x,), (int(lsbs), mode), self.size(x))

    def assume(self, x: int, low: Any, high: Any) -> int:
        size = self.size(x)
        low = np.broadcast_to(np.asarray(low, dtype=np.int64), (size,)).copy()
        high = np.broadcast_to(np.asarray(high, dtype=np.int64), (size,)).copy()
        return self._add(Ops.ASSUME, (x,), (low, high), size)

    def output(self, x: int, name: str = "output") -> int:
        return self._add(Ops.OUTPUT, (x,), name, self.size(x))

    def build(self) -> Graph:
        return verify_graph(Graph(tuple(self.nodes)))
