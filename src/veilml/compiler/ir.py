"""The integer IR: a small graph of integer vector operations.

Every value is a 1-D integer vector per sample (the interpreter adds a leading batch axis).
A node is ``Node(op, src, arg, size)``: ``src`` are indices of earlier nodes, so a graph's node
list is always in topological order. Whether a value is encrypted follows from its sources
(inputs are encrypted, constants are clear). The rules a graph must follow are
:mod:`veilml.compiler.spec`; graphs are built with :mod:`veilml.compiler.builder`. Ranges and bit
widths are derived by :mod:`veilml.compiler.ranges`; the meaning of each op is
:mod:`veilml.compiler.interpreter`. What a CMP predicate, a LUT's index and a ROUND compute is defined
once here (:data:`CMP_FUNCTIONS`, :func:`lut_index`, :func:`round_bits`), for the modules that need it:
the interpreter, range inference and the lowering (concrete rounds with its own operation).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from veilml.errors import VeilmlError

__all__ = ["CMP_FUNCTIONS", "CMP_PREDICATES", "ROUND_MODES", "Graph", "IRError", "Node", "Ops", "lut_index", "round_bits"]


class IRError(VeilmlError, ValueError):
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
    LUT = "lut"  # src: (x,); arg: (table, offset); out = table[clip(x - offset)]; a 2-D table has one row per element
    ROUND = "round"  # src: (x,); arg: (lsbs, mode); zero the low bits, rounding or truncating
    # ** hints and results **
    ASSUME = "assume"  # src: (x,); arg: (low, high) a range the producer guarantees
    OUTPUT = "output"  # src: (x,); arg: name


#: what each CMP predicate computes; the interpreter applies it to arrays, the lowering to concrete's tracers
CMP_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "le": operator.le,
    "lt": operator.lt,
    "ge": operator.ge,
    "gt": operator.gt,
    "eq": operator.eq,
    "ne": operator.ne,
}
CMP_PREDICATES = tuple(CMP_FUNCTIONS)
ROUND_MODES = ("round", "truncate")
LEVELED = frozenset({Ops.ADD, Ops.SUB, Ops.MUL, Ops.MATMUL, Ops.SUM, Ops.GATHER, Ops.ASSUME})


def round_bits(x: np.ndarray, lsbs: int, mode: str) -> np.ndarray:
    """What ROUND does: zero the ``lsbs`` low bits of ``x``, to the nearest multiple (ties up) or towards -inf.

    Shared by the interpreter (values) and range inference (bounds).
    """
    x = np.asarray(x, dtype=np.int64)
    if mode == "round":
        x = x + (1 << (lsbs - 1))
    return (x >> lsbs) << lsbs


def lut_index(x: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Where LUT reads a table of ``length`` entries for value ``x``: ``x - offset``, clipped to the table.

    Shared by the interpreter (values), range inference (bounds) and the lowering (concrete's tables).
    """
    return np.clip(x - offset, 0, length - 1)


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
