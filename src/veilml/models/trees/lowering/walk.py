"""The one walk over a tree's paths that every leaf stage shares.

A leaf stage looks up *groups* of leaves: a lone leaf (the indicators, and leaves no larger group
holds), a pair of sibling leaves, or a subtree of several tests. :func:`walk_ensemble` cuts every
tree into groups top down, merges the tests on the path to each group per feature
(:func:`~.leaf_values.leaf_tests`), indexes the distinct comparisons ``[q_f >= k]`` the groups read,
and writes the coefficients that turn the comparison bits into each group's lookup input
``t = c @ A0 + (1 - c) @ A1``: ``2**k`` times the failed tests above a group of ``k`` tests, plus
its tests' bits (for a lone leaf, the number of failed tests on its path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.compiler import bit_width
from veilml.models.trees.ensemble import Tree, TreeEnsemble
from veilml.models.trees.lowering.leaf_values import interval_comparisons, leaf_tests, right_code

__all__ = ["LeafGroup", "Walk", "lookup_bits", "tree_maxima", "walk_ensemble"]

#: one comparison ``[q_feature >= code]``
Comparison = tuple[int, int]
#: the tests from the root to a node: ``(node, went_right)``
Path = list[tuple[int, bool]]


@dataclass(frozen=True)
class LeafGroup:
    """A subtree looked up as one: its root, the tests above and inside it, and the value it returns."""

    node: int
    hold: list[Comparison]  # comparisons the path to ``node`` needs to hold
    fail: list[Comparison]  # comparisons the path to ``node`` needs to fail
    tests: list[Comparison]  # the tests inside the subtree, in pre-order (the first is the highest bit)
    values: list[np.ndarray]  # per combination of the tests' bits, the value of the leaf it reaches


@dataclass(frozen=True)
class Walk:
    """Every tree's groups, the comparisons they read (in index order) and their coefficients."""

    groups: list[LeafGroup]
    tree_of_group: list[int]
    pairs: tuple[Comparison, ...]  # (feature, code) of each comparison; ``((0, qmax),)`` when there is none
    n_comparisons: int
    A0: np.ndarray  # (comparisons, groups; at least 1 x 1): coefficient of c_j in each group's lookup input
    A1: np.ndarray  # (comparisons, groups): coefficient of 1 - c_j


def walk_ensemble(
    ensemble: TreeEnsemble,
    leaf_values: list[np.ndarray],
    n_bits: int,
    max_tests: int,
    width: int | None,
    in_node_order: bool = False,
) -> Walk | None:
    """Each tree cut into groups of at most ``max_tests`` tests whose input fits ``width`` bits.

    ``max_tests=0`` (and no ``width``): the lone leaves, the indicators' groups. Groups worth 0 (each
    tree's smallest leaf) and groups never reached (contradictory tests) are left out. A tree's
    groups are indexed top down, left first, or by node (``in_node_order``: the indicators list
    their leaves so). Returns None when a lone leaf's tests alone need more than ``width`` bits.
    """
    qmax = 2**n_bits - 1
    groups: list[LeafGroup] = []
    tree_of_group: list[int] = []
    for t, (tree, values) in enumerate(zip(ensemble.trees, leaf_values)):
        found = _tree_groups(tree, right_code(tree.threshold, tree.strict), values, qmax, max_tests, width)
        if found is None:
            return None
        if in_node_order:
            found.sort(key=lambda group: group.node)
        groups += found
        tree_of_group += [t] * len(found)
    index: dict[Comparison, int] = {}
    coefficients = [_coefficients(group, index) for group in groups]
    A0 = np.zeros((max(len(index), 1), max(len(groups), 1)), dtype=np.int64)
    A1 = np.zeros_like(A0)
    for i, (zero, one) in enumerate(coefficients):
        for j, c in one.items():
            A1[j, i] += c
        for j, c in zero.items():
            A0[j, i] += c
    pairs = tuple(sorted(index, key=index.get)) or ((0, qmax),)  # a constant model still reads x
    return Walk(groups, tree_of_group, pairs, len(index), A0, A1)


def lookup_bits(A0: np.ndarray, A1: np.ndarray) -> int:
    """Bits of the largest lookup input ``c @ A0 + (1 - c) @ A1`` can reach (at least 1)."""
    return bit_width(0, max(1, int((A0 + A1).sum(axis=0).max(initial=0))))


def tree_maxima(per_group: np.ndarray, tree_of_group: list[int]) -> np.ndarray:
    """The largest sum of each column when every tree adds one of its groups' rows (one leaf is reached)."""
    tree_of_group = np.asarray(tree_of_group)
    return np.asarray(sum(per_group[tree_of_group == t].max(axis=0) for t in np.unique(tree_of_group)), dtype=np.int64)


def _coefficients(group: LeafGroup, index: dict[Comparison, int]) -> tuple[dict[int, int], dict[int, int]]:
    """A group's coefficients of ``c_j`` and of ``1 - c_j``, by comparison index (new comparisons indexed
    in the order: tests that must hold, that must fail, inside)."""
    k = len(group.tests)
    one = {index.setdefault(pair, len(index)): 2**k for pair in group.hold}
    zero = {index.setdefault(pair, len(index)): 2**k for pair in group.fail}
    for i, pair in enumerate(group.tests):  # test i's bit: c == 1 goes right
        j = index.setdefault(pair, len(index))
        zero[j] = zero.get(j, 0) + 2 ** (k - 1 - i)
    return zero, one


def _tree_groups(
    tree: Tree, codes: np.ndarray, values: np.ndarray, qmax: int, max_tests: int, width: int | None
) -> list[LeafGroup] | None:
    """One tree's groups, top down and left first (no recursion: deep trees); None if a lone leaf does not fit."""
    most = max_tests if width is None else min(max_tests, width)
    groups: list[LeafGroup] = []
    stack: list[tuple[int, Path]] = [(0, [])]
    while stack:
        node, path = stack.pop()
        prefix = leaf_tests(codes, tree, path, 0, qmax)
        if prefix is None:
            continue  # the path contradicts itself: never reached
        inner = _tests_under(tree, node, most)
        hold, fail = interval_comparisons(prefix, 0, qmax)
        if inner is not None and all(0 < codes[n] <= qmax for n in inner) and _fits(len(hold) + len(fail), len(inner), width):
            slots = [_reached_value(tree, codes, values, node, path, inner, bits, qmax) for bits in range(2 ** len(inner))]
            if any(v.any() for v in slots):
                tests = [(int(tree.feature[n]), int(codes[n])) for n in inner]
                groups.append(LeafGroup(node, hold, fail, tests, slots))
            continue
        if tree.left[node] < 0:
            return None  # a lone leaf with too many tests
        stack += [(int(tree.right[node]), [*path, (node, True)]), (int(tree.left[node]), [*path, (node, False)])]
    return groups


def _fits(n_path_tests: int, k: int, width: int | None) -> bool:
    """Whether ``t`` (``2**k`` times up to ``n_path_tests`` failed tests, plus ``k`` bits) fits ``width`` bits."""
    return width is None or (n_path_tests + 1) * 2**k - 1 <= 2**width - 1


def _tests_under(tree: Tree, node: int, most: int) -> list[int] | None:
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
    tree: Tree, codes: np.ndarray, values: np.ndarray, node: int, path: Path, inner: list[int], bits: int, qmax: int
) -> np.ndarray:
    """The value of the leaf that ``bits`` (test ``i`` is bit ``k - 1 - i``) reach from ``node``; 0 if
    that leaf's whole path contradicts itself (never reached)."""
    k = len(inner)
    bit = {n: (bits >> (k - 1 - i)) & 1 for i, n in enumerate(inner)}
    while tree.left[node] >= 0:
        path = [*path, (node, bool(bit[node]))]
        node = int(tree.right[node]) if bit[node] else int(tree.left[node])
    return values[node] if leaf_tests(codes, tree, path, 0, qmax) is not None else 0 * values[node]
