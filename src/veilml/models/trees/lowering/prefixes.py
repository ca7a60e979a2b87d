"""The prefixes leaf stage: every lookup on two bits, for trees whose leaves have more than three tests.

A leaf indicator ``[failed tests == 0]`` reads as many bits as its path has tests: a depth-4 or depth-5 leaf
needs a 3-bit lookup. Here a leaf with more than three (merged) tests reads instead the indicator of an ancestor
``n`` with at most three tests, ``g_n = [failed tests to n == 0]``, and its own remaining tests (at most two):
``[(1 - g_n) + failed remaining tests == 0]``, so every lookup's input is at most 3 and fits two bits. An
ancestor is shared by every leaf under it that reads it (the shallowest that fits: on a full depth-4 tree, the
four depth-2 nodes). More lookups than the indicators' (on a full depth-4 tree 4 + 15 against 15), each cheaper,
and the gap widens as the error budget tightens: measured with concrete 2.11 on lookups of sums of encrypted
bits, 2-bit and 3-bit lookups cost 3.8e7 and 4.4e7 at a global p_error of 1e-5, 4.1e7 and 6.5e7 at 1e-10.
So the stage is tried only under a tight error budget (``low_error_only``, see
:func:`~.ensemble.worth_compiling`).

The ancestors' indicators feed only the leaves' lookups: a value added to the scores too would share the
scores' width in concrete (one bit width per connected sum), and the leaves' lookups would widen with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.compiler import GraphBuilder
from veilml.models.trees.ensemble import Tree, TreeEnsemble
from veilml.models.trees.lowering.leaf_values import digit_values, interval_comparisons, leaf_tests, right_code
from veilml.models.trees.lowering.stages import Parts, failed_tests, scores
from veilml.models.trees.lowering.tables import LeafTables, QuantizedLeaves
from veilml.models.trees.lowering.walk import tree_maxima

__all__ = ["MOST_TESTS", "PrefixTables", "prefix_tables"]

#: the most failed tests a 2-bit lookup input counts (0..3)
MOST_TESTS = 3

#: one test of a path: (must hold, (feature, code))
Test = tuple[bool, tuple[int, int]]


@dataclass(frozen=True)
class PrefixTables(LeafTables):
    """``A0`` / ``A1``: the leaves' own tests; ``P0`` / ``P1``: the ancestors'; ``G[p, leaf] = 1`` where a leaf reads
    ancestor ``p``'s indicator; ``V`` the leaf values' one-bit digits."""

    P0: np.ndarray  # (comparisons, ancestors)
    P1: np.ndarray
    G: np.ndarray  # (ancestors, leaves)
    V: np.ndarray  # (leaves, outputs x digits)
    low_error_only: bool = True

    @property
    def n_lookups(self) -> int:
        return self.A0.shape[1] + self.P0.shape[1]

    def leaf_stage(self, g: GraphBuilder, parts: Parts) -> int:
        ancestors = g.lut(failed_tests(g, parts, self.P0, self.P1), [1] + [0] * MOST_TESTS)
        missing = g.sub(g.const(np.ones(self.G.shape[0], dtype=np.int64)), ancestors)
        t = g.add(failed_tests(g, parts, self.A0, self.A1), g.matmul(missing, self.G))
        return scores(g, g.lut(t, [1] + [0] * MOST_TESTS), self.V, self.maxima)


def prefix_tables(ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, score_rule: bool = False) -> PrefixTables | None:
    """The prefixes stage's tables; None where no leaf has more than three tests (the indicators already read two
    bits) or where a leaf has no ancestor that fits (more than five tests past any three-test ancestor)."""
    leaves = QuantizedLeaves.of(ensemble, n_bits, leaf_bits, score_rule)
    qmax = 2**n_bits - 1
    index: dict[tuple[int, int], int] = {}
    ancestors: dict[tuple[int, int], int] = {}  # (tree, node) -> ancestor column
    ancestor_tests: list[set[Test]] = []
    leaf_rows: list[tuple[set[Test], int | None]] = []
    values: list[np.ndarray] = []
    tree_of_leaf: list[int] = []
    for t, (tree, tree_values) in enumerate(zip(ensemble.trees, leaves.values)):
        codes = right_code(tree.threshold, tree.strict)
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            if tree.left[node] >= 0:
                stack += [(int(tree.right[node]), [*path, (node, True)]), (int(tree.left[node]), [*path, (node, False)])]
                continue
            own = _tests(codes, tree, path, qmax)
            if own is None or not tree_values[node].any():
                continue  # never reached, or worth 0 in every output
            if len(own) <= MOST_TESTS:
                leaf_rows.append((own, None))
            else:
                found = _ancestor(codes, tree, path, own, qmax)
                if found is None:
                    return None
                depth, above = found
                key = (t, path[depth][0])
                if key not in ancestors:
                    ancestors[key] = len(ancestor_tests)
                    ancestor_tests.append(above)
                leaf_rows.append((own - above, ancestors[key]))
            values.append(tree_values[node])
            tree_of_leaf.append(t)
    if not ancestors:
        return None
    for tests in [*ancestor_tests, *(tests for tests, _ in leaf_rows)]:
        for _, pair in sorted(tests):
            index.setdefault(pair, len(index))
    P0, P1 = _coefficients(ancestor_tests, index)
    A0, A1 = _coefficients([tests for tests, _ in leaf_rows], index)
    G = np.zeros((len(ancestor_tests), len(leaf_rows)), dtype=np.int64)
    for i, (_, ancestor) in enumerate(leaf_rows):
        if ancestor is not None:
            G[ancestor, i] = 1
    n_outputs = len(leaves.outputs)
    n_digits = leaves.bits
    V, combine = digit_values(values, n_outputs, 1, n_digits)
    output_quantizer, bias, combine = leaves.output_steps(ensemble, combine)
    stages = {
        "leaf selection": f"{len(leaf_rows)} leaf lookups on 2 bits, {int(G.sum())} of them (leaves of more than "
        f"{MOST_TESTS} tests) reading one of {len(ancestor_tests)} ancestor lookups on 2 bits",
        "scores": leaves.summed(ensemble, f"{n_outputs} output(s) x {n_digits} digit(s) of 1 bit"),
    }
    pairs = tuple(sorted(index, key=index.get))
    return PrefixTables(
        pairs,
        A0,
        A1,
        tree_maxima(V, tree_of_leaf),
        output_quantizer,
        bias,
        combine,
        len(index),
        len(leaf_rows),
        stages,
        leaves.bits,
        P0,
        P1,
        G,
        V,
    )


def _tests(codes: np.ndarray, tree: Tree, path: list[tuple[int, bool]], qmax: int) -> set[Test] | None:
    """The path's tests merged per feature, as (must hold, comparison); None if they contradict."""
    merged = leaf_tests(codes, tree, path, 0, qmax)
    if merged is None:
        return None
    hold, fail = interval_comparisons(merged, 0, qmax)
    return {(True, pair) for pair in hold} | {(False, pair) for pair in fail}


def _ancestor(
    codes: np.ndarray, tree: Tree, path: list[tuple[int, bool]], own: set[Test], qmax: int
) -> tuple[int, set[Test]] | None:
    """The shallowest ancestor (its depth, its tests) with at most three tests that leaves at most two of ``own``."""
    for depth in range(1, len(path)):
        above = _tests(codes, tree, path[:depth], qmax)
        assert above is not None  # a prefix of a reachable path is reachable
        if len(above) <= MOST_TESTS and len(own - above) <= MOST_TESTS - 1:
            return depth, above
    return None


def _coefficients(rows: list[set[Test]], index: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """``(B0, B1)``: 1 where comparison j must fail (counted on ``c_j``) / hold (counted on ``1 - c_j``)."""
    B0 = np.zeros((max(len(index), 1), max(len(rows), 1)), dtype=np.int64)
    B1 = np.zeros_like(B0)
    for i, tests in enumerate(rows):
        for hold, pair in tests:
            (B1 if hold else B0)[index[pair], i] = 1
    return B0, B1
