"""The value leaf stages' tables: one lookup per pair of sibling leaves, or per subtree of
several tests, that returns the leaf value.

See :func:`veilml.models.trees.lowering.stages.paired_values` for the graph these tables feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.compiler import bit_width
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import (
    code_bits,
    complementary,
    interval_comparisons,
    leaf_tests,
    quantize_leaves,
    right_code,
    with_complement,
)
from veilml.quantization import UniformQuantizer

__all__ = ["PairedTables", "paired_tables"]


@dataclass(frozen=True)
class PairedTables:
    """The tables of a value leaf stage, pairs or subtrees (see :func:`~.stages.paired_values`)."""

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
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, width: int, score_rule: bool = True, max_tests: int = 1
) -> PairedTables | None:
    """Subtrees of at most ``max_tests`` tests whose leaf values one lookup of at most ``width`` bits returns.

    ``max_tests=1``: pairs of sibling leaves. A pair under parent ``P`` is looked up on
    ``t = 2 u + c_P``, with ``u`` the failed tests on the path to ``P`` (merged per feature):
    ``t == 0`` is the left leaf, ``t == 1`` the right. In general a subtree with ``k`` tests
    ``c_1..c_k`` (in pre-order) is looked up on ``t = 2**k u + sum_i 2**(k-i) c_i``, whose first
    ``2**k`` entries are the leaf each combination of the bits reaches: ``k`` can be larger where
    few tests lead to the subtree (a whole 5-test tree in a 5-bit lookup, 3 tests under 3 failed
    tests).

    Top down, a subtree whose ``t`` would not fit in ``width`` bits, or with more tests or a test
    that is constant on the code scale, is split into its children's subtrees, down to lone leaves
    looked up on their own failed tests. Leaves worth 0 (each tree's smallest) need no lookup.
    Returns None when a lone leaf's tests alone need more than ``width`` bits.
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
    tests_of_group: list[int] = []  # per group: the tests inside it (0: a lone leaf, 1: a pair)
    limit = 2**width - 1

    def as_group(tree: Any, codes: np.ndarray, tree_values: np.ndarray, t: int, node: int, path: list[tuple[int, bool]]) -> bool:
        """Look up the subtree under ``node`` (reached by ``path``) as one group (nothing if it is
        never reached or worth 0); False if it does not fit in one lookup and must be split."""
        prefix = leaf_tests(codes, tree, path, qmin, qmax)
        if prefix is None:
            return True  # the path contradicts itself: never reached
        inner = _tests_under(tree, node, min(max_tests, width))
        if inner is None or not all(qmin < codes[n] <= qmax for n in inner):
            return False
        k = len(inner)
        hold, fail = interval_comparisons(prefix, qmin, qmax)
        if (len(hold) + len(fail) + 1) * 2**k - 1 > limit:
            return False
        slots = [_reached_value(tree, codes, tree_values, node, path, inner, code, qmin, qmax) for code in range(2**k)]
        if any(v.any() for v in slots):
            one = {comparisons.setdefault(pair, len(comparisons)): 2**k for pair in hold}
            zero = {comparisons.setdefault(pair, len(comparisons)): 2**k for pair in fail}
            for i, n in enumerate(inner):  # test i's bit: c == 1 goes right
                j = comparisons.setdefault((int(tree.feature[n]), int(codes[n])), len(comparisons))
                zero[j] = zero.get(j, 0) + 2 ** (k - 1 - i)
            ones.append(one), zeros.append(zero), values.append(slots)
            tree_of_group.append(t), tests_of_group.append(k)
        return True

    for t, (tree, tree_values) in enumerate(zip(ensemble.trees, leaf_values)):
        codes = right_code(tree.threshold, tree.strict)
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]  # top down, left first (no recursion: deep trees)
        while stack:
            node, path = stack.pop()
            if as_group(tree, codes, tree_values, t, node, path):
                continue
            if tree.left[node] < 0:
                return None  # a lone leaf with too many tests
            stack += [(int(tree.right[node]), [*path, (node, True)]), (int(tree.left[node]), [*path, (node, False)])]

    n_groups, n_out = max(len(values), 1), len(outputs)
    A0 = np.zeros((max(len(comparisons), 1), n_groups), dtype=np.int64)
    A1 = np.zeros_like(A0)
    for i, (one, zero) in enumerate(zip(ones, zeros)):
        for j, c in one.items():
            A1[j, i] += c
        for j, c in zero.items():
            A0[j, i] += c
    t_bits = bit_width(0, max(1, int((A0 + A1).sum(axis=0).max(initial=0))))
    grouped = np.zeros((n_groups, n_out, 2**t_bits), dtype=np.int64)  # group, output, t -> value
    for i, vals in enumerate(values):
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
    kinds = [
        (sum(k > 1 for k in tests_of_group), f"subtrees of 2-{max(tests_of_group, default=0)} tests"),
        (tests_of_group.count(1), "pairs of sibling leaves"),
    ]
    groups_text = "".join(f"{n} {what}, " for n, what in kinds if n)
    stages = {
        "leaf selection": f"{len(rows)} value lookups on {t_bits} bits: {groups_text}{tests_of_group.count(0)} lone leaves"
        + (f", one lookup per output each leaf scores ({n_out} outputs)" if n_out > 1 else ""),
        "scores": f"{n_out} output(s) of {code_bits(leaf_values)}-bit leaf values, summed over {len(ensemble.trees)} tree(s) in FHE"
        + ("; output 0 derived by the client" if complement else ""),
    }
    pairs = tuple(sorted(comparisons, key=comparisons.get)) or ((0, qmax),)
    n_leaves = sum(tests_of_group) + len(tests_of_group)  # a binary subtree has one leaf more than tests
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


def _tests_under(tree: Any, node: int, most: int) -> list[int] | None:
    """The tests of the subtree under ``node`` in pre-order, or None if there are more than ``most``."""
    tests: list[int] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if tree.left[n] >= 0:
            if len(tests) == most:
                return None
            tests.append(n)
            stack += [int(tree.right[n]), int(tree.left[n])]  # the left subtree first: pre-order
    return tests


def _reached_value(
    tree: Any,
    codes: np.ndarray,
    tree_values: np.ndarray,
    node: int,
    path: list[tuple[int, bool]],
    inner: list[int],
    code: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """The value of the leaf that the bits ``code`` (test ``i`` is bit ``k - 1 - i``) reach from
    ``node``; 0 if that leaf's whole path contradicts itself (never reached)."""
    k = len(inner)
    bit = {n: (code >> (k - 1 - i)) & 1 for i, n in enumerate(inner)}
    while tree.left[node] >= 0:
        path = [*path, (node, bool(bit[node]))]
        node = int(tree.right[node]) if bit[node] else int(tree.left[node])
    return tree_values[node] if leaf_tests(codes, tree, path, qmin, qmax) is not None else 0 * tree_values[node]
