"""The paired leaf stage's tables: one lookup per pair of sibling leaves that returns the leaf value.

See :func:`veilml.models.trees.stages.paired_values` for the graph these tables feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...quantization import UniformQuantizer
from .ensemble import TreeEnsemble
from .leaf_values import code_bits, complementary, interval_comparisons, leaf_tests, quantize_leaves, right_code, with_complement

__all__ = ["PairedTables", "paired_tables"]


@dataclass(frozen=True)
class PairedTables:
    """The tables of the paired-values leaf stage (see :func:`~.stages.paired_values`)."""

    pairs: tuple[tuple[int, int], ...]
    A0: np.ndarray  # (comparisons, groups): coefficient of c_j in each group's lookup input
    A1: np.ndarray  # (comparisons, groups): coefficient of 1 - c_j
    row_group: np.ndarray  # (lookups,): the group each lookup reads
    tables: np.ndarray  # (lookups, 2**width): a group's value for one output, per lookup input
    S: np.ndarray  # (lookups, outputs): sums the lookups of each output
    maxima: np.ndarray
    output_quantizer: UniformQuantizer
    bias: np.ndarray
    combine: np.ndarray
    n_comparisons: int
    n_leaves: int
    stages: dict[str, str]
    leaf_bits: int


def paired_tables(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, width: int, score_rule: bool = True
) -> PairedTables | None:
    """Groups of one or two sibling leaves whose values one ``width``-bit lookup returns directly.

    A pair under parent ``P`` is looked up on ``t = 2 u + c_P``, with ``u`` the failed tests on
    the path to ``P`` (merged per feature): ``t == 0`` is the left leaf, ``t == 1`` the right.
    A pair whose ``t`` would not fit in ``width`` bits, or whose parent's test is constant on the
    code scale, becomes two lone leaves, looked up on their own failed tests. Leaves worth 0 (each
    tree's smallest) need no lookup. Returns None when a lone leaf's tests alone need more bits.
    """
    qmin, qmax = 0, 2**n_bits - 1
    complement = complementary(ensemble)
    outputs = [1] if complement else list(range(ensemble.n_outputs))
    leaf_values, output_quantizer, bias = quantize_leaves(ensemble, n_bits, leaf_bits, outputs, score_rule)
    comparisons: dict[tuple[int, int], int] = {}
    ones: list[dict[int, int]] = []  # per group: comparison -> coefficient of (1 - c)
    zeros: list[dict[int, int]] = []  # per group: comparison -> coefficient of c
    values: list[list[np.ndarray]] = []  # per group: the value at t = 0, 1, ...
    tree_of_group: list[int] = []
    limit = 2**width - 1

    def tests(intervals: dict[int, tuple[int, int]], scale: int) -> tuple[dict[int, int], dict[int, int]]:
        hold, fail = interval_comparisons(intervals, qmin, qmax)
        one = {comparisons.setdefault(pair, len(comparisons)): scale for pair in hold}
        zero = {comparisons.setdefault(pair, len(comparisons)): scale for pair in fail}
        return one, zero

    def lone(tree_codes: np.ndarray, tree: Any, path: list[tuple[int, bool]], value: np.ndarray, t: int) -> bool:
        intervals = leaf_tests(tree_codes, tree, path, qmin, qmax)
        if intervals is None or not value.any():
            return True  # never reached, or worth 0: nothing to look up
        one, zero = tests(intervals, 1)
        if len(one) + len(zero) > limit:
            return False
        ones.append(one), zeros.append(zero), values.append([value]), tree_of_group.append(t)
        return True

    for t, (tree, tree_values) in enumerate(zip(ensemble.trees, leaf_values)):
        codes = right_code(tree.threshold, tree.strict)
        paths = dict(tree.leaf_paths())
        done: set[int] = set()
        for leaf, path in sorted(paths.items()):
            if leaf in done:
                continue
            parent = path[-1][0] if path else -1
            left, right = (int(tree.left[parent]), int(tree.right[parent])) if parent >= 0 else (-1, -1)
            k, f = (int(codes[parent]), int(tree.feature[parent])) if parent >= 0 else (0, 0)
            paired = left in paths and right in paths and qmin < k <= qmax
            prefix = leaf_tests(codes, tree, path[:-1], qmin, qmax) if paired else None
            if prefix is not None:
                paired = 2 * sum(map(len, interval_comparisons(prefix, qmin, qmax))) + 1 <= limit
            if prefix is None or not paired:
                if prefix is None and paired:
                    done.update((left, right))  # the path to the parent contradicts itself: never reached
                elif not lone(codes, tree, path, tree_values[leaf], t):
                    return None
                continue
            done.update((left, right))
            v_left, v_right = (
                tree_values[c] if leaf_tests(codes, tree, paths[c], qmin, qmax) is not None else 0 * tree_values[c]
                for c in (left, right)
            )
            if not (v_left.any() or v_right.any()):
                continue
            one, zero = tests(prefix, 2)
            j = comparisons.setdefault((f, k), len(comparisons))  # the parent's bit: c == 1 goes right
            zero[j] = zero.get(j, 0) + 1
            ones.append(one), zeros.append(zero), values.append([v_left, v_right]), tree_of_group.append(t)

    n_groups, n_out = max(len(values), 1), len(outputs)
    A0 = np.zeros((max(len(comparisons), 1), n_groups), dtype=np.int64)
    A1 = np.zeros_like(A0)
    grouped = np.zeros((n_groups, n_out, limit + 1), dtype=np.int64)  # group, output, t -> value
    for i, (one, zero, vals) in enumerate(zip(ones, zeros, values)):
        for j, c in one.items():
            A1[j, i] += c
        for j, c in zero.items():
            A0[j, i] += c
        for slot, v in enumerate(vals):
            grouped[i, :, slot] = v
    # one lookup per (group, output) whose values are not all 0: a boosting tree scores one class
    rows = [(i, o) for o in range(n_out) for i in range(n_groups) if grouped[i, o].any()] or [(0, 0)]
    row_group = np.array([i for i, _ in rows], dtype=np.int64)
    tables = np.stack([grouped[i, o] for i, o in rows])
    S = np.zeros((len(rows), n_out), dtype=np.int64)
    S[np.arange(len(rows)), [o for _, o in rows]] = 1
    tree_of_group = np.asarray(tree_of_group or [0])
    per_group_max = grouped.max(axis=2)  # (groups, outputs)
    maxima = sum(per_group_max[tree_of_group == t].max(axis=0) for t in np.unique(tree_of_group))
    combine = np.eye(n_out, dtype=np.int64)
    if complement:
        output_quantizer, bias, combine = with_complement(ensemble, output_quantizer, bias, combine)
    n_pairs = sum(len(v) == 2 for v in values)
    stages = {
        "leaf selection": f"{len(rows)} value lookups on {width} bits: {n_pairs} pairs of sibling leaves "
        f"and {len(values) - n_pairs} lone leaves"
        + (f", one lookup per output each leaf scores ({n_out} outputs)" if n_out > 1 else ""),
        "scores": f"{n_out} output(s) of {code_bits(leaf_values)}-bit leaf values, summed over {len(ensemble.trees)} tree(s) in FHE"
        + ("; output 0 derived by the client" if complement else ""),
    }
    pairs = tuple(sorted(comparisons, key=comparisons.get)) or ((0, qmax),)
    n_leaves = sum(len(v) for v in values)
    return PairedTables(
        pairs,
        A0,
        A1,
        row_group,
        tables,
        S,
        np.asarray(maxima, dtype=np.int64),
        output_quantizer,
        bias,
        combine.astype(np.int64),
        len(comparisons),
        n_leaves,
        stages,
        code_bits(leaf_values),
    )
