"""The stages of a tree ensemble's lowering, each a small function over a :class:`GraphBuilder`.

1. **comparisons**: the bits ``c_j = [q_f >= k]`` of every distinct (feature, code) pair, by the
   strategy :data:`COMPARISONS` holds for the input encoding's kind, which also says in words
   what the client encrypts;
2. **leaf selection**: for each leaf the number of failed tests on its path, ``u = c @ B0 + (1 - c)
   @ B1`` (free), and ``[u == 0]`` through one small table (a lookup per leaf);
3. **scores**: leaf indicators times a clear matrix of leaf-value digits, summed over trees (free).

:func:`paired_values` replaces stages 2 and 3 with one lookup per pair of sibling leaves, or per
subtree of several tests, that returns the leaf value itself.

A comparisons strategy returns *parts*: pairs of (graph node holding bits, the comparison indices
those bits are, in order), so that strategies may compute some comparisons one way and the rest
another (the chunked encoding reads boundary comparisons directly and looks the others up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veilml.compiler import GraphBuilder, InputEncoding
from veilml.compiler.encodings import EncodingKind

__all__ = [
    "COMPARISONS",
    "ComparisonStrategy",
    "Parts",
    "comparisons_chunked",
    "describe_comparisons",
    "failed_tests",
    "leaf_selection",
    "paired_values",
    "scores",
]

#: (bits node, comparison indices held by its elements, in order)
Parts = list[tuple[int, list[int]]]


def comparisons_thermometer(g: GraphBuilder, x: int, enc: InputEncoding, pairs: list[tuple[int, int]]) -> Parts:
    """Every comparison is one encrypted thermometer bit: a free gather."""
    return [(g.gather(x, [enc.column(f, k) for f, k in pairs]), list(range(len(pairs))))]


def comparisons_identity(g: GraphBuilder, x: int, enc: InputEncoding, pairs: list[tuple[int, int]]) -> Parts:
    """One encrypted comparison (a lookup at the input precision) per distinct threshold."""
    features = g.gather(x, [f for f, _ in pairs])
    return [(g.cmp(features, g.const([k for _, k in pairs]), "ge"), list(range(len(pairs))))]


def comparisons_chunked(g: GraphBuilder, x: int, enc: InputEncoding, pairs: list[tuple[int, int]]) -> Parts:
    """Comparisons on a chunk boundary are gathered bits; each other one is one 2-bit lookup.

    See :meth:`InputEncoding.chunk_columns`: ``[s >= 2]`` of ``s = H(h) + H(h + 1) + L(l)``.
    """
    direct, direct_columns, looked_up, sums, constants = [], [], [], [], []
    for j, (f, k) in enumerate(pairs):
        columns, constant = enc.chunk_columns(f, k)
        if len(columns) == 1 and constant == 0 and (k - enc.qmin) % 2**enc.low_bits == 0:
            direct.append(j)
            direct_columns.append(columns[0])
        else:
            looked_up.append(j)
            sums.append(columns)
            constants.append(constant)
    parts: Parts = []
    if direct:
        parts.append((g.gather(x, direct_columns), direct))
    if looked_up:
        used = sorted({c for columns in sums for c in columns})
        position = {c: i for i, c in enumerate(used)}
        M = np.zeros((len(used), len(looked_up)), dtype=np.int64)
        for j, columns in enumerate(sums):
            M[[position[c] for c in columns], j] = 1
        s = g.add(g.matmul(g.gather(x, used), M), g.const(constants))
        parts.append((g.lut(s, [0, 0, 1, 1]), looked_up))
    return parts


def comparisons_thresholds(g: GraphBuilder, x: int, enc: InputEncoding, pairs: list[tuple[int, int]]) -> Parts:
    """The client encrypted exactly these comparisons (a model-dependent encoding): nothing to do."""
    if list(enc.thresholds) != list(pairs):
        raise ValueError(
            f"this thresholds encoding encrypts {len(enc.thresholds)} comparisons that are not the {len(pairs)} this "
            "model makes; pass encoding='thresholds' to encrypt exactly the model's"
        )
    return [(x, list(range(len(pairs))))]


@dataclass(frozen=True)
class ComparisonStrategy:
    """How the comparison bits are computed from one kind of encoded input, and what the client encrypts, in words."""

    compute: Callable[[GraphBuilder, int, InputEncoding, list[tuple[int, int]]], Parts]
    describe: Callable[[InputEncoding], str]


def _chunked_words(enc: InputEncoding) -> str:
    return f"chunked thermometer ({enc.total_bits - enc.low_bits}+{enc.low_bits} bits): {enc.size} bits per row"


#: the comparison stage of each encoding kind
COMPARISONS: dict[EncodingKind, ComparisonStrategy] = {
    EncodingKind.THRESHOLDS: ComparisonStrategy(
        comparisons_thresholds,
        lambda enc: f"the model's thresholds: {enc.size} bits per row (model-dependent: the client holds the split points)",
    ),
    EncodingKind.THERMOMETER: ComparisonStrategy(comparisons_thermometer, lambda enc: f"thermometer: {enc.size} bits per row"),
    EncodingKind.IDENTITY: ComparisonStrategy(comparisons_identity, lambda enc: f"identity: {enc.size} values per row"),
    EncodingKind.CHUNKED: ComparisonStrategy(comparisons_chunked, _chunked_words),
}


def failed_tests(g: GraphBuilder, parts: Parts, B0: np.ndarray, B1: np.ndarray) -> int:
    """``c @ B0 + (1 - c) @ B1`` over the comparison bits ``c`` (free): with 0/1 matrices, where
    ``B0[j, leaf]`` = 1 if comparison j must fail and ``B1`` if it must hold, each leaf's count of failed tests."""
    failed = None
    for bits, indices in parts:
        flipped = g.sub(g.const(np.ones(len(indices), dtype=np.int64)), bits)
        term = g.add(g.matmul(bits, B0[indices]), g.matmul(flipped, B1[indices]))
        failed = term if failed is None else g.add(failed, term)
    assert failed is not None
    return failed


def leaf_selection(g: GraphBuilder, parts: Parts, B0: np.ndarray, B1: np.ndarray) -> int:
    """``[failed tests == 0]`` per leaf (see :func:`failed_tests`): one lookup per leaf, one shared table."""
    max_failed = max(1, int((B0 + B1).sum(axis=0).max(initial=0)))
    return g.lut(failed_tests(g, parts, B0, B1), [1] + [0] * max_failed)


def paired_values(
    g: GraphBuilder,
    parts: Parts,
    A0: np.ndarray,
    A1: np.ndarray,
    row_group: np.ndarray,
    tables: np.ndarray,
    S: np.ndarray,
    maxima: np.ndarray,
) -> int:
    """Leaf values looked up directly, one lookup per group of leaves and output, summed per output.

    A group is a subtree with ``k`` tests (a lone leaf: 0, a pair of sibling leaves: 1).
    ``t = c @ A0 + (1 - c) @ A1`` is, per group, ``2**k`` times the failed tests above it plus
    its tests' bits (in pre-order, the first the highest): for a pair, ``t == 0`` selects the
    left leaf, ``t == 1`` the right one (see :mod:`.values`). Lookup ``k`` reads group
    ``row_group[k]`` through its own table ``tables[k]`` (the group's values for one output); ``S``
    sums the lookups of each output. One leaf per tree is reached, so each output is at most
    ``maxima``.
    """
    t = failed_tests(g, parts, A0, A1)
    if not np.array_equal(row_group, np.arange(A0.shape[1])):
        t = g.gather(t, row_group)
    return g.assume(g.matmul(g.lut(t, tables), S), 0, maxima)


def scores(g: GraphBuilder, indicator: int, V: np.ndarray, maxima: np.ndarray) -> int:
    """The summed leaf-value digits: one leaf per tree is reached, so the sum is at most ``maxima``."""
    return g.assume(g.matmul(indicator, V), 0, maxima)


def describe_comparisons(enc: InputEncoding, parts: Parts, g: GraphBuilder) -> str:
    """How the comparisons were computed, in words."""
    from veilml.compiler import Ops

    looked_up = sum(len(indices) for node, indices in parts if g.nodes[node].op in (Ops.LUT, Ops.CMP))
    total = sum(len(indices) for _, indices in parts)
    if not looked_up:
        return f"{total} comparisons, all encrypted bits (no lookup)"
    return f"{total} comparisons: {total - looked_up} encrypted bits, {looked_up} lookups"
