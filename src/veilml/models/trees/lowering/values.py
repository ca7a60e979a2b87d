"""The value leaf stages' tables: one lookup per pair of sibling leaves (:func:`pair_tables`), or per subtree
of several tests (:func:`subtree_tables`), that returns the leaf value itself.

See :func:`veilml.models.trees.lowering.stages.paired_values` for the graph these tables feed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.compiler import GraphBuilder
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.stages import Parts, paired_values
from veilml.models.trees.lowering.tables import LeafTables, QuantizedLeaves
from veilml.models.trees.lowering.walk import LeafGroup, lookup_bits, tree_maxima, walk_ensemble

__all__ = ["SUBTREE_BITS", "ValueTables", "pair_tables", "subtree_tables"]

#: the subtree stage's lookups are at most this wide. Measured on ``benchmarks/trees.py``'s models
#: (concrete 2.11, default p_error): a 5-bit lookup costs 1.7-2.3x the complexity of a 3-bit one, and
#: 4-bit or 6-bit subtrees cost more than 5-bit ones everywhere (the diabetes regressor: 12 lookups
#: 9.1e8 at 4 bits, 8 lookups 8.3e8 at 5, 27 indicators 1.2e9).
SUBTREE_BITS = 5


@dataclass(frozen=True)
class ValueTables(LeafTables):
    """Lookup ``k`` reads group ``row_group[k]`` through its own table ``tables[k]``; ``S`` sums them per output."""

    row_group: np.ndarray  # (lookups,): the group each lookup reads
    tables: np.ndarray  # (lookups, 2**width): a group's value for one output, per lookup input
    S: np.ndarray  # (lookups, outputs): sums the lookups of each output

    @property
    def n_lookups(self) -> int:
        return len(self.tables)

    def leaf_stage(self, g: GraphBuilder, parts: Parts) -> int:
        return paired_values(g, parts, self.A0, self.A1, self.row_group, self.tables, self.S, self.maxima)


def pair_tables(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, width: int, score_rule: bool = True
) -> ValueTables | None:
    """One lookup of at most ``width`` bits per pair of sibling leaves, on ``t = 2 u + c_P``.

    ``u`` counts the failed tests on the path to the pair's parent ``P`` (merged per feature):
    ``t == 0`` is the left leaf, ``t == 1`` the right. A pair whose ``t`` would not fit, or whose
    test is constant on the code scale, is looked up as two lone leaves. Leaves worth 0 (each tree's
    smallest) need no lookup. None when a lone leaf's tests alone need more than ``width`` bits.
    """
    return _value_tables(ensemble, n_bits, leaf_bits, width, score_rule, max_tests=1)


def subtree_tables(ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, score_rule: bool = True) -> ValueTables | None:
    """One lookup of at most :data:`SUBTREE_BITS` bits per subtree of ``k`` tests, on ``t = 2**k u + sum_i 2**(k-i) c_i``.

    The first ``2**k`` entries of a subtree's table are the leaf each combination of its tests' bits
    ``c_1..c_k`` (in pre-order) reaches: ``k`` can be larger where few tests lead to the subtree (a
    whole 5-test tree in a 5-bit lookup, 3 tests under 3 failed tests). Top down, a subtree that
    does not fit, or with a test that is constant on the code scale, is split into its children's
    subtrees, down to lone leaves. None when a lone leaf's tests alone need more than 5 bits.
    """
    return _value_tables(ensemble, n_bits, leaf_bits, SUBTREE_BITS, score_rule, max_tests=SUBTREE_BITS)


def _value_tables(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, width: int, score_rule: bool, max_tests: int
) -> ValueTables | None:
    """The tables of the groups of at most ``max_tests`` tests that one lookup of ``width`` bits returns."""
    leaves = QuantizedLeaves.of(ensemble, n_bits, leaf_bits, score_rule)
    walk = walk_ensemble(ensemble, leaves.values, n_bits, max_tests, width)
    if walk is None:
        return None
    n_out = len(leaves.outputs)
    t_bits = lookup_bits(walk.A0, walk.A1)
    grouped = np.zeros((walk.A0.shape[1], n_out, 2**t_bits), dtype=np.int64)  # group, output, t -> value
    for i, group in enumerate(walk.groups):
        for slot, v in enumerate(group.values):
            grouped[i, :, slot] = v
    # one lookup per (group, output) whose values are not all 0: a boosting tree scores one class
    rows = [(i, o) for o in range(n_out) for i in range(len(grouped)) if grouped[i, o].any()] or [(0, 0)]
    S = np.zeros((len(rows), n_out), dtype=np.int64)
    S[np.arange(len(rows)), [o for _, o in rows]] = 1
    output_quantizer, bias, combine = leaves.output_steps(ensemble, np.eye(n_out, dtype=np.int64))
    tests = [len(group.tests) for group in walk.groups]
    stages = {
        "leaf selection": f"{len(rows)} value lookups on {t_bits} bits: {_groups_text(walk.groups)}{tests.count(0)} lone leaves"
        + (f", one lookup per output each leaf scores ({n_out} outputs)" if n_out > 1 else ""),
        "scores": leaves.summed(ensemble, f"{n_out} output(s) of {leaves.bits}-bit leaf values"),
    }
    return ValueTables(
        walk.pairs,
        walk.A0,
        walk.A1,
        tree_maxima(grouped.max(axis=2), walk.tree_of_group or [0]),
        output_quantizer,
        bias,
        combine,
        walk.n_comparisons,
        sum(tests) + len(tests),  # a binary subtree has one leaf more than tests
        stages,
        leaves.bits,
        np.array([i for i, _ in rows], dtype=np.int64),
        np.stack([grouped[i, o] for i, o in rows]),
        S,
    )


def _groups_text(groups: list[LeafGroup]) -> str:
    """The subtrees and pairs among ``groups``, in words (``"3 subtrees of 2-5 tests, 4 pairs of sibling leaves, "``)."""
    tests = [len(group.tests) for group in groups]
    kinds = [
        (sum(k > 1 for k in tests), f"subtrees of 2-{max(tests, default=0)} tests"),
        (tests.count(1), "pairs of sibling leaves"),
    ]
    return "".join(f"{n} {what}, " for n, what in kinds if n)
