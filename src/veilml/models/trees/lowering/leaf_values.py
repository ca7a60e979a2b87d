"""Leaf values of a tree ensemble on the integer grid: the codes of the thresholds, the tests on a
leaf's path, and the quantized leaf values every leaf stage of the lowering shares."""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.compiler import bit_width
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.quantization import UniformQuantizer

__all__ = [
    "code_bits",
    "complementary",
    "digit_values",
    "digits",
    "interval_comparisons",
    "leaf_tests",
    "quantize_leaves",
    "right_code",
    "score_rule_trees",
    "with_complement",
]


def right_code(threshold: np.ndarray, split: str | np.ndarray) -> np.ndarray:
    """Smallest integer code that goes right: ``q > t`` for ``<=`` tests, ``q >= t`` for ``<``.

    ``split`` is ``"<="`` or ``"<"`` for every node, or per node a boolean array that is True
    where the test is ``<`` (``Tree.strict``).
    """
    threshold = np.asarray(threshold, dtype=np.float64)
    if isinstance(split, str):
        if split not in ("<=", "<"):
            raise ValueError(f"split must be '<=' or '<', got {split!r}")
        strict = np.full(threshold.shape, split == "<")
    else:
        strict = np.asarray(split, dtype=bool)
    return np.where(strict, np.ceil(threshold), np.floor(threshold) + 1).astype(np.int64)


def score_rule_trees(n_bits: int) -> int:
    """The most trees whose leaves can share an ``(n_bits + 1)``-bit score with a step per tree on average
    (the half step of rounding each tree adds is kept free, see :func:`quantize_leaves`)."""
    return (2 ** (n_bits + 2) - 2) // 3  # n_trees <= (2**(n_bits + 1) - 1) - n_trees / 2


def quantize_leaves(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    outputs: list[int],
    score_rule: bool = False,
    shared_scale: bool = False,
) -> tuple[list[np.ndarray], UniformQuantizer, np.ndarray]:
    """Per-tree non-negative integer leaf values of ``outputs`` and the quantizer that maps their sum back.

    Each tree's smallest leaf value (per output) moves into the public float bias first, so the
    shared scale covers the widest tree's spread, not an offset one tree carries (LightGBM puts
    its initial score in the first tree's leaves: 3 bits of leaf precision were lost to it).

    With ``leaf_bits`` the widest tree's spread gets ``2**leaf_bits - 1`` steps; without it,
    ``n_bits``, unless ``score_rule`` (a value leaf stage is compiled, see
    :func:`lower_candidates`): then an ensemble's scale is set on the *sum*, so that the trees'
    largest codes add up to at most ``2**(n_bits + 1) - 1`` and the encrypted score is an
    ``(n_bits + 1)``-bit integer (one tree never gets more than ``n_bits``). With paired lookups
    the score's width sets concrete's parameters for every lookup: on the 20-tree forests and
    boosters of ``benchmarks/trees.py`` (6 bits), 6-bit leaves summed to 11 bits cost 1.4-1.5x the
    complexity of this 7-bit score, at the same test accuracy. The rule needs at least one step per tree
    on average (:func:`score_rule_trees`): with more trees than that, most trees' leaves rounded to one
    value and the model collapsed (XGBoost 20 x 4 at 3 bits predicted one class on four folds of five),
    so each tree keeps ``n_bits`` and the score widens instead. ``shared_scale``: one step for every output
    (the widest output's), so that an output the client derives from the others is an integer sum of theirs
    (see :func:`with_complement`).
    """
    trees = [(tree, tree.value[:, outputs]) for tree in ensemble.trees]
    lows = [value[tree.is_leaf].min(axis=0) for tree, value in trees]
    shifted = [value - low for (_, value), low in zip(trees, lows)]
    n_trees = len(ensemble.trees)
    if score_rule and leaf_bits is None and 1 < n_trees <= score_rule_trees(n_bits):
        spreads = np.array([value[tree.is_leaf].max(axis=0) for value, (tree, _) in zip(shifted, trees)])
        target = 2 ** (n_bits + 1) - 1
        # rounding adds at most half a step per tree: keep room for it (or half the range, with very many trees)
        scale = np.maximum(spreads.sum(axis=0) / max(target - n_trees / 2, target / 2), spreads.max(axis=0) / (2**n_bits - 1))
        scale = np.where(scale > 0, scale, 1.0)
        if shared_scale:
            scale = np.full_like(scale, scale.max())
        per_tree = [
            np.where(tree.is_leaf[:, None], np.round(value / scale), 0).astype(np.int64)
            for value, (tree, _) in zip(shifted, trees)
        ]
        output = UniformQuantizer(
            n_bits=n_bits + 1, signed=False, scale=scale, zero_point=np.zeros(len(outputs), dtype=np.int64), axis=1
        )
        return per_tree, output, ensemble.bias[outputs] + np.sum(lows, axis=0)
    leaf_bits = n_bits if leaf_bits is None else leaf_bits
    values = np.concatenate([v[t.is_leaf] for v, (t, _) in zip(shifted, trees)])
    if shared_scale:
        low, high = np.full(len(outputs), values.min()), np.full(len(outputs), values.max())
        quantizer = UniformQuantizer.from_range(low, high, leaf_bits, axis=1)
    else:
        quantizer = UniformQuantizer.calibrate(values, leaf_bits, axis=1)
    per_tree, offsets = [], np.zeros(len(outputs), dtype=np.int64)
    for (tree, _), value in zip(trees, shifted):
        codes = quantizer.quantize(value, warn=False)
        low = codes[tree.is_leaf].min(axis=0)  # a public per-tree shift: the smallest leaf costs 0
        per_tree.append(codes - low)
        offsets += low
    # sum over trees of (code - zero_point) * scale == (sum of shifted codes - zero_point') * scale
    output = UniformQuantizer(
        n_bits=leaf_bits,
        signed=False,
        scale=quantizer.scale,
        zero_point=(n_trees * quantizer.zero_point - offsets).astype(np.int64),
        axis=1,
    )
    return per_tree, output, ensemble.bias[outputs] + np.sum(lows, axis=0)


def complementary(ensemble: TreeEnsemble) -> bool:
    """Outputs whose leaf values add up to the same constant in every leaf of each tree.

    A forest's class probabilities do (``p0 = 1 - p1 - ...``): then only outputs ``1..K-1`` are computed
    encrypted, and the client derives output 0 as a public constant minus their sum (on wine's 3 classes, a
    20 x 4 forest's leaf lookups fell from 159 to 125: more leaves are worth 0 in every computed output).
    """
    if ensemble.n_outputs < 2:
        return False
    for tree in ensemble.trees:
        sums = tree.value[tree.is_leaf].sum(axis=1)
        if np.ptp(sums) > 1e-9 * max(1.0, float(np.max(np.abs(tree.value[tree.is_leaf])))):
            return False
    return True


def with_complement(
    ensemble: TreeEnsemble, quantizer: UniformQuantizer, bias: np.ndarray, combine: np.ndarray
) -> tuple[UniformQuantizer, np.ndarray, np.ndarray]:
    """Output steps for every output when outputs ``1..K-1`` are computed (see ``complementary``).

    With ``T`` the constant sum of all raw scores, ``score0 = T - sum_k score_k``; the outputs share one
    scale, so the client's integer for output 0 is minus the sum of the others' (``q0 = -sum_k q_k``,
    ``zero_point0 = -sum_k zero_point_k``), and its bias is ``T`` minus theirs.
    """
    total = sum(float(tree.value[tree.is_leaf][0].sum()) for tree in ensemble.trees) + float(ensemble.bias.sum())
    n_computed = combine.shape[1]  # (encrypted integers, computed outputs)
    scale = np.broadcast_to(np.asarray(quantizer.scale, dtype=np.float64), (n_computed,))
    zero_point = np.broadcast_to(np.asarray(quantizer.zero_point, dtype=np.int64), (n_computed,))
    if n_computed > 1 and np.ptp(scale) > 1e-12 * float(scale.max()):
        raise ValueError(
            "the computed outputs of a complementary ensemble must share one scale (quantize_leaves(shared_scale=True))"
        )
    every = UniformQuantizer(
        n_bits=quantizer.n_bits,
        signed=False,
        scale=np.concatenate([scale[:1], scale]),
        zero_point=np.concatenate([[-zero_point.sum()], zero_point]).astype(np.int64),
        axis=1,
    )
    first = -combine.sum(axis=1, keepdims=True)
    return every, np.concatenate([[total - bias.sum()], bias]), np.concatenate([first, combine], axis=1)


def leaf_tests(
    tree_codes: np.ndarray, tree: Any, path: list[tuple[int, bool]], qmin: int, qmax: int
) -> dict[int, tuple[int, int]] | None:
    """The path's tests merged per feature into ``lo <= q_f <= hi``; None if they contradict."""
    intervals: dict[int, tuple[int, int]] = {}
    for node, went_right in path:
        lo, hi = intervals.get(int(tree.feature[node]), (qmin, qmax))
        if went_right:
            lo = max(lo, int(tree_codes[node]))
        else:
            hi = min(hi, int(tree_codes[node]) - 1)
        intervals[int(tree.feature[node])] = (lo, hi)
    if any(lo > hi for lo, hi in intervals.values()):
        return None
    return intervals


def interval_comparisons(
    intervals: dict[int, tuple[int, int]], qmin: int, qmax: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The comparisons ``[q_f >= k]`` that ``lo <= q_f <= hi`` per feature needs: those that must
    hold (``k = lo``) and those that must fail (``k = hi + 1``); a bound at the grid's edge needs none."""
    hold = [(f, lo) for f, (lo, _) in intervals.items() if lo > qmin]
    fail = [(f, hi + 1) for f, (_, hi) in intervals.items() if hi < qmax]
    return hold, fail


def code_bits(leaf_values: list[np.ndarray]) -> int:
    """Bits of the largest quantized leaf value of any tree."""
    return bit_width(0, max(1, max(int(v.max(initial=0)) for v in leaf_values)))


def digit_values(values: list[np.ndarray], n_outputs: int, digit_bits: int, n_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """The leaves' values (one row of ``n_outputs`` per leaf) cut into digits, and the clear matrix with which the
    client recombines the decrypted digit sums into one integer per output: ``(V, combine)``."""
    V = digits(np.asarray(values, dtype=np.int64).reshape(len(values), n_outputs), digit_bits, n_digits)
    combine = np.kron((1 << (digit_bits * np.arange(n_digits)))[:, None], np.eye(n_outputs, dtype=np.int64))
    return V, combine


def digits(values: np.ndarray, digit_bits: int, n_digits: int) -> np.ndarray:
    """Base-2**digit_bits digits of non-negative values, low digit first, stacked on axis 1."""
    mask = (1 << digit_bits) - 1
    return np.concatenate([(values >> (k * digit_bits)) & mask for k in range(n_digits)], axis=1)
