"""The integer IR: a small graph of integer vector operations.

Every value is a 1-D integer vector per sample (the interpreter adds a leading batch axis).
A node is ``Node(op, src, arg, size)``: ``src`` are indices of earlier nodes, so a graph's node
list is always in topological order. Whether a value is encrypted follows from its sources
(inputs are encrypted, constants are clear). Ranges and bit widths are derived by
:mod:`veilml.compiler.ranges`; the meaning of each op is :mod:`veilml.compiler.interpreter`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Graph", "GraphBuilder", "IRError", "Node", "Ops", "CMP_PREDICATES", "ROUND_MODES"]


class IRError(ValueError):
    """A graph breaks a rule of the IR."""


class Ops(enum.Enum):
    # ** leaves **
    INPUT = "input"  # arg: (name, low, high) declared per-element bounds; encrypted
    CONST = "const"  # arg: int64 vector; clear
    # ** movement **
    GATHER = "gather"  # src: (x,); arg: tuple of indices into x
    # ** leveled arithmetic (no bootstrapping) **
    ADD = "add"  # src: (a, b); at least one encrypted
    SUB = "sub"  # src: (a, b); at least one encrypted
    MUL = "mul"  # src: (a, c); c clear
    MATMUL = "matmul"  # src: (x,); arg: clear int64 matrix (len(x), size)
    SUM = "sum"  # src: (x,); size 1
    # ** table lookups (one programmable bootstrap per element) **
    CMP = "cmp"  # src: (x, c); c clear; arg: predicate in CMP_PREDICATES; result in {0, 1}
    LUT = "lut"  # src: (x,); arg: (table, offset); out = table[clip(x - offset)]
    ROUND = "round"  # src: (x,); arg: (lsbs, mode); zero the low bits, rounding or truncating
    # ** hints and results **
    ASSUME = "assume"  # src: (x,); arg: (low, high) a range the producer guarantees
    OUTPUT = "output"  # src: (x,); arg: name


CMP_PREDICATES = ("le", "lt", "ge", "gt", "eq", "ne")
ROUND_MODES = ("round", "truncate")
LEVELED = frozenset({Ops.ADD, Ops.SUB, Ops.MUL, Ops.MATMUL, Ops.SUM, Ops.GATHER, Ops.ASSUME})


@dataclass(frozen=True, eq=False)
class Node:
    """One operation. ``size`` is the length of the per-sample vector it produces."""

    op: Ops
    src: tuple[int, ...]
    arg: Any
    size: int

    def replace(self, **changes: Any) -> Node:
        unknown = set(changes) - {"op", "src", "arg", "size"}
        if unknown:
            raise TypeError(f"unknown Node fields {sorted(unknown)}")
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class Graph:
    """An ordered list of nodes; OUTPUT nodes, in order, are the results."""

    nodes: tuple[Node, ...]

    @property
    def inputs(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.op is Ops.INPUT]

    @property
    def outputs(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.op is Ops.OUTPUT]

    def input_names(self) -> list[str]:
        return [self.nodes[i].arg[0] for i in self.inputs]

    def encrypted(self) -> list[bool]:
        """Whether each node's value is encrypted (anything computed from an input)."""
        flags: list[bool] = []
        for node in self.nodes:
            flags.append(node.op is Ops.INPUT or any(flags[s] for s in node.src))
        return flags

    def live(self) -> set[int]:
        """Indices of the nodes that some output depends on."""
        live = set(self.outputs)
        for i in reversed(range(len(self.nodes))):
            if i in live:
                live.update(self.nodes[i].src)
        return live

    def count(self, op: Ops) -> int:
        return sum(node.op is op for node in self.nodes)

    def verify(self) -> Graph:
        """Check the IR rules and that ranges can be inferred; raise :class:`IRError` if not."""
        from .ranges import infer_ranges

        verify(self)
        infer_ranges(self)
        return self

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        lines = []
        for i, n in enumerate(self.nodes):
            arg = n.arg
            if isinstance(arg, np.ndarray) or (isinstance(arg, tuple) and len(str(arg)) > 60):
                arg = "..."
            src = ", ".join(f"%{s}" for s in n.src)
            lines.append(f"%{i} = {n.op.value}({src}) [{n.size}] {arg if arg is not None else ''}")
        return "\n".join(lines)


def _check(cond: bool, index: int, node: Node, why: str) -> None:
    if not cond:
        raise IRError(f"IR verification failed at %{index} ({node.op.value}): {why}")


def verify(graph: Graph) -> None:  # noqa: C901 - one flat table of rules reads best
    """The IR spec: each rule is one line."""
    encrypted = graph.encrypted()
    for i, n in enumerate(graph.nodes):
        _check(isinstance(n.op, Ops), i, n, "unknown op")
        _check(all(0 <= s < i for s in n.src), i, n, "sources must be earlier nodes")
        _check(n.size >= 1, i, n, "size must be positive")
        sizes = [graph.nodes[s].size for s in n.src]
        if n.op is Ops.INPUT:
            _check(not n.src and len(n.arg) == 3, i, n, "INPUT takes (name, low, high)")
            _check(np.shape(n.arg[1]) == np.shape(n.arg[2]) == (n.size,), i, n, "bounds shape")
            _check(bool(np.all(np.asarray(n.arg[1]) <= np.asarray(n.arg[2]))), i, n, "low > high")
        elif n.op is Ops.CONST:
            _check(not n.src and np.shape(n.arg) == (n.size,), i, n, "CONST holds a vector of size")
        elif n.op is Ops.GATHER:
            _check(len(n.src) == 1 and len(n.arg) == n.size, i, n, "GATHER takes one source")
            _check(all(0 <= k < sizes[0] for k in n.arg), i, n, "gather index out of range")
        elif n.op in (Ops.ADD, Ops.SUB):
            _check(len(n.src) == 2, i, n, "takes two sources")
            _check(any(encrypted[s] for s in n.src), i, n, "needs an encrypted operand")
            _check(all(s in (1, n.size) for s in sizes), i, n, "operand sizes do not broadcast")
        elif n.op in (Ops.MUL, Ops.CMP):
            _check(len(n.src) == 2, i, n, "takes (encrypted, clear)")
            _check(encrypted[n.src[0]] and not encrypted[n.src[1]], i, n, "second operand must be clear")
            _check(all(s in (1, n.size) for s in sizes), i, n, "operand sizes do not broadcast")
            if n.op is Ops.CMP:
                _check(n.arg in CMP_PREDICATES, i, n, f"predicate must be one of {CMP_PREDICATES}")
        elif n.op is Ops.MATMUL:
            _check(len(n.src) == 1, i, n, "MATMUL takes one encrypted source and a clear matrix")
            _check(np.shape(n.arg) == (sizes[0], n.size), i, n, "matrix shape mismatch")
        elif n.op is Ops.SUM:
            _check(len(n.src) == 1 and n.size == 1, i, n, "SUM takes one source, gives size 1")
        elif n.op is Ops.LUT:
            _check(len(n.src) == 1 and n.size == sizes[0], i, n, "LUT is elementwise")
            _check(len(n.arg) == 2 and np.ndim(n.arg[0]) == 1, i, n, "LUT takes (table, offset)")
        elif n.op is Ops.ROUND:
            _check(len(n.src) == 1 and n.size == sizes[0], i, n, "ROUND is elementwise")
            _check(n.arg[0] >= 1 and n.arg[1] in ROUND_MODES, i, n, "ROUND takes (lsbs>=1, mode)")
        elif n.op is Ops.ASSUME:
            _check(len(n.src) == 1 and n.size == sizes[0], i, n, "ASSUME is elementwise")
            _check(np.shape(n.arg[0]) == np.shape(n.arg[1]) == (n.size,), i, n, "bounds shape")
        elif n.op is Ops.OUTPUT:
            _check(len(n.src) == 1 and n.size == sizes[0], i, n, "OUTPUT takes one source")
            _check(encrypted[n.src[0]], i, n, "outputs must be encrypted values")
        if n.op not in (Ops.INPUT, Ops.CONST, Ops.ADD, Ops.SUB):
            _check(not n.src or encrypted[n.src[0]], i, n, "first operand must be encrypted")
    if not graph.inputs:
        raise IRError("IR verification failed: the graph has no INPUT node")
    if not graph.outputs:
        raise IRError("IR verification failed: the graph has no OUTPUT node")
    names = graph.input_names()
    if len(set(names)) != len(names):
        raise IRError(f"IR verification failed: duplicate input names {names}")
    live = graph.live()
    unused = [graph.nodes[i].arg[0] for i in graph.inputs if i not in live]
    if unused:
        raise IRError(f"IR verification failed: input(s) {unused} reach no output; remove them")


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
        table = np.asarray(table, dtype=np.int64).ravel()
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
        return Graph(tuple(self.nodes)).verify()
