"""The IR spec: the rules every graph follows, checked before a graph is used.

:func:`check_rules` checks the structure (one line per rule); :func:`verify_graph` also infers the
ranges of every node (:mod:`veilml.compiler.ranges`), which fails on a graph whose values cannot be
bounded (a ROUND removing all the bits of its value, an ASSUME outside the inferred range).
Builders, deserialization and the lowering all call :func:`verify_graph`.
"""

from __future__ import annotations

import numpy as np

from veilml.compiler.ir import CMP_PREDICATES, ROUND_MODES, Graph, IRError, Node, Ops
from veilml.compiler.ranges import infer_ranges

__all__ = ["check_rules", "verify_graph"]


def verify_graph(graph: Graph) -> Graph:
    """Check the IR rules and that ranges can be inferred; raise :class:`IRError` if not. Returns ``graph``."""
    check_rules(graph)
    infer_ranges(graph)
    return graph


def _check(cond: bool, index: int, node: Node, why: str) -> None:
    if not cond:
        raise IRError(f"IR verification failed at %{index} ({node.op.value}): {why}")


def check_rules(graph: Graph) -> None:  # noqa: C901 - one flat table of rules reads best
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
            _check(len(n.arg) == 2 and np.ndim(n.arg[0]) in (1, 2), i, n, "LUT takes (table, offset)")
            _check(np.ndim(n.arg[0]) == 1 or np.shape(n.arg[0])[0] == n.size, i, n, "a 2-D LUT table has one row per element")
            _check(np.shape(n.arg[0])[-1] >= 1, i, n, "LUT tables are not empty")
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
