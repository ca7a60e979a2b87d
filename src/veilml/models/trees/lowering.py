"""TreeEnsemble -> integer IR, in the named stages of :mod:`.stages`.

The whole ensemble becomes four steps; with the thermometer encoding the only lookups are one per
reachable leaf:

1. comparison bits ``c_j = [q_f >= k]``, one per distinct (feature, code) pair in the ensemble:
   a free gather of thermometer bits (``encoding="thermometer"``), a gather or one 2-bit lookup
   on chunked thermometer bits (``"chunked"``), or one encrypted comparison each on the raw
   quantized values (``"identity"``); ``"auto"`` lowers each and keeps the cheapest by the IR's
   cost function (:mod:`veilml.compiler.cost`);
2. for each leaf, the number of tests on its path that the sample fails,
   ``u = c @ B0 + (1 - c) @ B1`` (clear matrix products: free). A path's tests on one feature are first merged into one
   interval, so ``u`` counts at most two tests per feature, and contradictory paths are dropped;
3. ``[u == 0]`` for every leaf: the only lookups, all through one small table;
4. the scores: leaf indicators times a clear matrix of quantized leaf values, shifted per tree
   so every value is >= 0, and cut into digits no wider than the lookups' input so that no
   encrypted value needs more precision than the lookups (free; the client recombines the
   digits). Nothing is padded, and trees are summed encrypted.

Steps 3 and 4 have a second strategy, the *paired* leaf stage: one lookup per pair of sibling
leaves (on twice the failed tests above their parent plus the parent's bit) that returns the leaf
value itself, so the client decrypts the score alone (:func:`lower_candidates` offers both; the
estimators compile both and keep the cheaper). An ensemble's leaves are quantized on one scale
chosen so that the summed score is an ``(n_bits + 1)``-bit integer (:func:`_quantize_leaves`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...compiler import Graph, GraphBuilder, InputEncoding, bit_width
from ...compiler.cost import CostModel, graph_cost
from ...quantization import UniformQuantizer
from .ensemble import TreeEnsemble
from .stages import COMPARISONS, describe_comparisons, describe_encoding, leaf_selection, paired_values, scores

__all__ = ["ENCODINGS", "LoweredEnsemble", "candidate_encodings", "lower_candidates", "lower_ensemble", "right_code"]


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


@dataclass(frozen=True)
class LoweredEnsemble:
    """The graph and what the client needs around it."""

    graph: Graph
    encoding: InputEncoding
    output_quantizer: UniformQuantizer
    output_bias: np.ndarray
    output_combine: np.ndarray
    n_comparisons: int
    n_leaves: int
    stages: dict[str, str]  # the strategy of each stage, in words (``fhe_report``)
    leaf_bits: int  # bits of the largest quantized leaf value of any tree


def _quantize_leaves(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, outputs: list[int], score_rule: bool = False
) -> tuple[list[np.ndarray], UniformQuantizer, np.ndarray]:
    """Per-tree non-negative integer leaf values of ``outputs`` and the quantizer that maps their sum back.

    Each tree's smallest leaf value (per output) moves into the public float bias first, so the
    shared scale covers the widest tree's spread, not an offset one tree carries (LightGBM puts
    its initial score in the first tree's leaves: 3 bits of leaf precision were lost to it).

    With ``leaf_bits`` the widest tree's spread gets ``2**leaf_bits - 1`` steps; without it,
    ``n_bits``, unless ``score_rule`` (the paired leaf stage is compiled, see
    :func:`lower_candidates`): then an ensemble's scale is set on the *sum*, so that the trees'
    largest codes add up to at most ``2**(n_bits + 1) - 1`` and the encrypted score is an
    ``(n_bits + 1)``-bit integer (one tree never gets more than ``n_bits``). With paired lookups
    the score's width sets concrete's parameters for every lookup: on the 20-tree forests and
    boosters of ``benchmarks/trees.py`` (6 bits), 6-bit leaves summed to 11 bits cost 1.4-1.5x the
    complexity of this 7-bit score, at the same test accuracy.
    """
    trees = [(tree, tree.value[:, outputs]) for tree in ensemble.trees]
    lows = [value[tree.is_leaf].min(axis=0) for tree, value in trees]
    shifted = [value - low for (_, value), low in zip(trees, lows)]
    n_trees = len(ensemble.trees)
    if score_rule and leaf_bits is None and n_trees > 1:
        spreads = np.array([value[tree.is_leaf].max(axis=0) for value, (tree, _) in zip(shifted, trees)])
        target = 2 ** (n_bits + 1) - 1
        # rounding adds at most half a step per tree: keep room for it (or half the range, with very many trees)
        scale = np.maximum(spreads.sum(axis=0) / max(target - n_trees / 2, target / 2), spreads.max(axis=0) / (2**n_bits - 1))
        scale = np.where(scale > 0, scale, 1.0)
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


def _complementary(ensemble: TreeEnsemble) -> bool:
    """Two outputs whose leaf values add up to the same constant in every leaf of each tree.

    A forest's class probabilities do (``p0 = 1 - p1``): then only the second output is
    computed encrypted, and the client derives the first as a public constant minus it.
    """
    if ensemble.n_outputs != 2:
        return False
    for tree in ensemble.trees:
        sums = tree.value[tree.is_leaf].sum(axis=1)
        if np.ptp(sums) > 1e-9 * max(1.0, float(np.max(np.abs(tree.value[tree.is_leaf])))):
            return False
    return True


def _with_complement(
    ensemble: TreeEnsemble, quantizer: UniformQuantizer, bias: np.ndarray, combine: np.ndarray
) -> tuple[UniformQuantizer, np.ndarray, np.ndarray]:
    """Output steps for both outputs when only the second one is computed (see ``_complementary``).

    With ``K`` the constant sum of both raw scores, ``score0 = K - score1``: the client negates
    the integers of output 1 (``q0 = -q1``, ``zero_point0 = -zero_point1``, same scale), and the
    bias of output 0 is ``K`` minus that of output 1.
    """
    total = sum(float(tree.value[tree.is_leaf][0].sum()) for tree in ensemble.trees) + float(ensemble.bias.sum())
    both = UniformQuantizer(
        n_bits=quantizer.n_bits,
        signed=False,
        scale=np.repeat(quantizer.scale, 2),
        zero_point=np.concatenate([-quantizer.zero_point, quantizer.zero_point]).astype(np.int64),
        axis=1,
    )
    return both, np.array([total - bias[0], bias[0]]), np.concatenate([-combine, combine], axis=1)


def _leaf_tests(
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


def _code_bits(leaf_values: list[np.ndarray]) -> int:
    """Bits of the largest quantized leaf value of any tree."""
    return bit_width(0, max(1, max(int(v.max(initial=0)) for v in leaf_values)))


def _digits(values: np.ndarray, digit_bits: int, n_digits: int) -> np.ndarray:
    """Base-2**digit_bits digits of non-negative values, low digit first, stacked on axis 1."""
    mask = (1 << digit_bits) - 1
    return np.concatenate([(values >> (k * digit_bits)) & mask for k in range(n_digits)], axis=1)


#: the encodings ``encoding="auto"`` chooses among (every one model-independent)
ENCODINGS = ("thermometer", "chunked", "identity")


def candidate_encodings(n_features: int, n_bits: int, kind: str) -> list[InputEncoding]:
    """The model-independent encodings named by ``kind``: one, every split of the bits for
    ``"chunked"``, or all of :data:`ENCODINGS` for ``"auto"``."""
    qmax = 2**n_bits - 1
    if kind == "auto":
        return [enc for k in ENCODINGS for enc in candidate_encodings(n_features, n_bits, k)]
    if kind == "chunked":
        return [InputEncoding("chunked", n_features, 0, qmax, low) for low in range(1, n_bits)]
    return [InputEncoding(kind, n_features, 0, qmax)]


def lower_ensemble(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    encoding: Literal["thermometer", "identity", "chunked", "thresholds", "auto"] | InputEncoding = "thermometer",
    cost_model: CostModel | None = None,
    leaf_lookups: Literal["indicators", "paired", "auto"] = "indicators",
) -> LoweredEnsemble:
    """Lower ``ensemble`` whose thresholds are on the unsigned ``n_bits`` code scale.

    ``encoding`` is what the client encrypts (:class:`~veilml.compiler.InputEncoding`); with
    ``"auto"`` (or ``"chunked"``, whose split between the chunks is then chosen), the graph is
    built for every candidate and the one whose estimated time per row (:func:`~veilml.compiler.
    cost.graph_cost` under ``cost_model``) is smallest wins; ties go to the earlier of
    :data:`ENCODINGS`. ``"thresholds"`` (never chosen by ``"auto"``) encrypts only the
    comparisons the model makes: the client then holds the model's split points.

    ``leaf_lookups`` is the leaf stage (see :func:`lower_candidates`); with ``"auto"`` the first
    candidate is returned.
    """
    return lower_candidates(ensemble, n_bits, leaf_bits, encoding, cost_model, leaf_lookups)[0]


#: a leaf stage with value lookups is worth compiling when it needs at most this share of the indicators' lookups
PAIRED_WORTH_TRYING = 0.8


def lower_candidates(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    encoding: Literal["thermometer", "identity", "chunked", "thresholds", "auto"] | InputEncoding = "thermometer",
    cost_model: CostModel | None = None,
    leaf_lookups: Literal["indicators", "paired", "auto"] = "auto",
) -> list[LoweredEnsemble]:
    """The lowerings worth compiling, for each leaf stage that ``leaf_lookups`` names.

    ``"indicators"``: one ``[failed tests == 0]`` lookup per leaf, the values applied by a clear
    matrix in digits (small, cheap lookups). ``"paired"``: one lookup per pair of sibling leaves
    that returns the leaf value itself (half the lookups on full trees, but the lookups' outputs
    carry the whole score, so concrete picks costlier parameters). ``"auto"``: the indicators,
    then the paired stage if it saves at least a fifth of the lookups. The IR's cost function does
    not model the noise that decides between them, so the caller compiles each candidate and keeps
    the one with the lowest complexity (:meth:`veilml.TreeClassifier.compile` does).
    """
    if leaf_lookups not in ("indicators", "paired", "auto"):
        raise ValueError(f"leaf_lookups must be 'indicators', 'paired' or 'auto', got {leaf_lookups!r}")
    score_rule = leaf_bits is None  # with the paired stage, the (n_bits + 1)-bit score (see _quantize_leaves)
    indicators = _leaf_tables(ensemble, n_bits, leaf_bits, score_rule)
    width = bit_width(0, max(1, int((indicators.B0 + indicators.B1).sum(axis=0).max(initial=0))))
    paired = _paired_tables(ensemble, n_bits, leaf_bits, width, score_rule) if leaf_lookups != "indicators" else None
    if leaf_lookups == "paired" and paired is None:
        raise ValueError("leaf_lookups='paired' cannot lower this ensemble (a leaf has too many tests); use 'indicators'")
    worth = paired is not None and (
        leaf_lookups == "paired" or paired.tables.shape[0] <= PAIRED_WORTH_TRYING * indicators.B0.shape[1]
    )
    if not worth:  # indicators alone: each tree's leaves keep n_bits (digits keep every encrypted value narrow)
        variants: list[_LeafTables | _PairedTables] = [_leaf_tables(ensemble, n_bits, leaf_bits) if score_rule else indicators]
    else:
        variants = ([] if leaf_lookups == "paired" else [indicators]) + [paired]
    return [_lower_stage(tables, ensemble, n_bits, encoding, cost_model) for tables in variants]


def _lower_stage(
    tables: _LeafTables | _PairedTables,
    ensemble: TreeEnsemble,
    n_bits: int,
    encoding: str | InputEncoding,
    cost_model: CostModel | None,
) -> LoweredEnsemble:
    """``tables`` built for the encoding ``encoding`` names, the cheapest by the IR's cost function."""
    if isinstance(encoding, InputEncoding):
        return _build(tables, encoding)
    if encoding == "thresholds":  # model-dependent: exactly the comparisons this model makes
        return _build(tables, InputEncoding("thresholds", ensemble.n_features, 0, 2**n_bits - 1, thresholds=tables.pairs))
    built = [_build(tables, enc) for enc in candidate_encodings(ensemble.n_features, n_bits, encoding)]
    return min(built, key=lambda low: graph_cost(low.graph).estimate(cost_model)["total_s"])


@dataclass(frozen=True)
class _LeafTables:
    """What the lowering computes once, whatever the encoding: comparisons, leaf tests and values."""

    pairs: tuple[tuple[int, int], ...]  # (feature, code) of each comparison, in index order
    B0: np.ndarray  # (comparisons, leaves): 1 where the comparison must fail for the leaf
    B1: np.ndarray  # (comparisons, leaves): 1 where it must hold
    V: np.ndarray  # (leaves, outputs x digits): leaf-value digits
    maxima: np.ndarray  # largest sum of each digit column over the trees
    output_quantizer: UniformQuantizer
    bias: np.ndarray
    combine: np.ndarray
    n_comparisons: int
    stages: dict[str, str]  # the encoding-independent stages, in words
    leaf_bits: int


def _leaf_tables(ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, score_rule: bool = False) -> _LeafTables:
    qmin, qmax = 0, 2**n_bits - 1
    complement = _complementary(ensemble)
    outputs = [1] if complement else list(range(ensemble.n_outputs))
    leaf_values, output_quantizer, bias = _quantize_leaves(ensemble, n_bits, leaf_bits, outputs, score_rule)

    comparisons: dict[tuple[int, int], int] = {}  # (feature, code) -> comparison index
    must_be_one: list[list[int]] = []  # per reachable leaf: comparisons that must hold
    must_be_zero: list[list[int]] = []  # per reachable leaf: comparisons that must fail
    values, tree_of_leaf = [], []
    for t, (tree, tree_values) in enumerate(zip(ensemble.trees, leaf_values)):
        codes = right_code(tree.threshold, tree.strict)
        for leaf, path in tree.leaf_paths():
            if not tree_values[leaf].any():
                continue  # a leaf worth 0 adds nothing: no lookup (the smallest leaf of each tree)
            intervals = _leaf_tests(codes, tree, path, qmin, qmax)
            if intervals is None:
                continue  # contradictory tests: this leaf is never reached
            ones = [comparisons.setdefault((f, lo), len(comparisons)) for f, (lo, _) in intervals.items() if lo > qmin]
            zeros = [comparisons.setdefault((f, hi + 1), len(comparisons)) for f, (_, hi) in intervals.items() if hi < qmax]
            must_be_one.append(ones)
            must_be_zero.append(zeros)
            values.append(tree_values[leaf])
            tree_of_leaf.append(t)

    if not values:  # every leaf is worth 0: one test-free "leaf" keeps the graph well formed
        must_be_one, must_be_zero, values, tree_of_leaf = [[]], [[]], [leaf_values[0][0]], [0]
    n_cmp, n_leaves = len(comparisons), len(values)
    # u = bits @ B0 + (1 - bits) @ B1 counts the failed tests of each leaf. Every term is >= 0,
    # so no intermediate is signed or wider than the longest merged path. A model without
    # comparisons still reads one (constant-free) bit: a row of zeros.
    B0 = np.zeros((max(n_cmp, 1), n_leaves), dtype=np.int64)
    B1 = np.zeros_like(B0)
    for leaf in range(n_leaves):
        B0[must_be_zero[leaf], leaf] = 1
        B1[must_be_one[leaf], leaf] = 1
    max_failed = max(1, int((B0 + B1).sum(axis=0).max(initial=0)))

    # Leaf values are split into digits one bit narrower than the lookup's input: the lookups'
    # outputs and the encrypted sums then stay at that small precision, and the small weights
    # keep the noise low enough for the cheapest parameters (measured on breast cancer, depth 5:
    # complexity 6.3e8 with 2-bit digits, 8.4e8 with 3-bit, 1.2e9 with one 6-bit value).
    # The client recombines the digits.
    digit_bits = max(1, bit_width(0, max_failed) - 1)
    n_digits = -(-_code_bits(leaf_values) // digit_bits)
    V = _digits(np.asarray(values, dtype=np.int64).reshape(n_leaves, len(outputs)), digit_bits, n_digits)
    tree_of_leaf = np.asarray(tree_of_leaf)
    maxima = sum(V[tree_of_leaf == t].max(axis=0) for t in np.unique(tree_of_leaf))
    combine = np.kron((1 << (digit_bits * np.arange(n_digits)))[:, None], np.eye(len(outputs), dtype=np.int64))
    if complement:
        output_quantizer, bias, combine = _with_complement(ensemble, output_quantizer, bias, combine)
    stages = {
        "leaf selection": f"{n_leaves} leaf lookups [failed tests == 0] on {bit_width(0, max_failed)} bits",
        "scores": f"{len(outputs)} output(s) x {n_digits} digit(s) of {digit_bits} bit(s), summed over "
        f"{len(ensemble.trees)} tree(s) in FHE" + ("; output 0 derived by the client" if complement else ""),
    }
    pairs = tuple(sorted(comparisons, key=comparisons.get)) or ((0, qmax),)  # a constant model still reads x
    return _LeafTables(
        pairs, B0, B1, V, maxima, output_quantizer, bias, combine.astype(np.int64), n_cmp, stages, _code_bits(leaf_values)
    )


@dataclass(frozen=True)
class _PairedTables:
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


def _paired_tables(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, width: int, score_rule: bool = True
) -> _PairedTables | None:
    """Groups of one or two sibling leaves whose values one ``width``-bit lookup returns directly.

    A pair under parent ``P`` is looked up on ``t = 2 u + c_P``, with ``u`` the failed tests on
    the path to ``P`` (merged per feature): ``t == 0`` is the left leaf, ``t == 1`` the right.
    A pair whose ``t`` would not fit in ``width`` bits, or whose parent's test is constant on the
    code scale, becomes two lone leaves, looked up on their own failed tests. Leaves worth 0 (each
    tree's smallest) need no lookup. Returns None when a lone leaf's tests alone need more bits.
    """
    qmin, qmax = 0, 2**n_bits - 1
    complement = _complementary(ensemble)
    outputs = [1] if complement else list(range(ensemble.n_outputs))
    leaf_values, output_quantizer, bias = _quantize_leaves(ensemble, n_bits, leaf_bits, outputs, score_rule)
    comparisons: dict[tuple[int, int], int] = {}
    ones: list[dict[int, int]] = []  # per group: comparison -> coefficient of (1 - c)
    zeros: list[dict[int, int]] = []  # per group: comparison -> coefficient of c
    values: list[list[np.ndarray]] = []  # per group: the value at t = 0, 1, ...
    tree_of_group: list[int] = []
    limit = 2**width - 1

    def tests(intervals: dict[int, tuple[int, int]], scale: int) -> tuple[dict[int, int], dict[int, int]]:
        one = {comparisons.setdefault((f, lo), len(comparisons)): scale for f, (lo, _) in intervals.items() if lo > qmin}
        zero = {comparisons.setdefault((f, hi + 1), len(comparisons)): scale for f, (_, hi) in intervals.items() if hi < qmax}
        return one, zero

    def lone(tree_codes: np.ndarray, tree: Any, path: list[tuple[int, bool]], value: np.ndarray, t: int) -> bool:
        intervals = _leaf_tests(tree_codes, tree, path, qmin, qmax)
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
            prefix = _leaf_tests(codes, tree, path[:-1], qmin, qmax) if paired else None
            if prefix is not None:
                n_prefix = sum(lo > qmin for lo, _ in prefix.values()) + sum(hi < qmax for _, hi in prefix.values())
                paired = 2 * n_prefix + 1 <= limit
            if prefix is None or not paired:
                if prefix is None and paired:
                    done.update((left, right))  # the path to the parent contradicts itself: never reached
                elif not lone(codes, tree, path, tree_values[leaf], t):
                    return None
                continue
            done.update((left, right))
            v_left, v_right = (
                tree_values[c] if _leaf_tests(codes, tree, paths[c], qmin, qmax) is not None else 0 * tree_values[c]
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
        output_quantizer, bias, combine = _with_complement(ensemble, output_quantizer, bias, combine)
    n_pairs = sum(len(v) == 2 for v in values)
    stages = {
        "leaf selection": f"{len(rows)} value lookups on {width} bits: {n_pairs} pairs of sibling leaves "
        f"and {len(values) - n_pairs} lone leaves"
        + (f", one lookup per output each leaf scores ({n_out} outputs)" if n_out > 1 else ""),
        "scores": f"{n_out} output(s) of {_code_bits(leaf_values)}-bit leaf values, summed over {len(ensemble.trees)} tree(s) in FHE"
        + ("; output 0 derived by the client" if complement else ""),
    }
    pairs = tuple(sorted(comparisons, key=comparisons.get)) or ((0, qmax),)
    n_leaves = sum(len(v) for v in values)
    return _PairedTables(
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
        _code_bits(leaf_values),
    )


def _build_paired(tables: _PairedTables, enc: InputEncoding) -> LoweredEnsemble:
    g = GraphBuilder()
    x = g.input("x", *enc.bounds())
    parts = COMPARISONS[enc.kind](g, x, enc, list(tables.pairs))
    g.output(paired_values(g, parts, tables.A0, tables.A1, tables.row_group, tables.tables, tables.S, tables.maxima), "scores")
    stages = {"encoding": describe_encoding(enc), "comparisons": describe_comparisons(enc, parts, g), **tables.stages}
    return LoweredEnsemble(
        g.build(),
        enc,
        tables.output_quantizer,
        tables.bias,
        tables.combine,
        tables.n_comparisons,
        tables.n_leaves,
        stages,
        tables.leaf_bits,
    )


def _build(tables: _LeafTables | _PairedTables, enc: InputEncoding) -> LoweredEnsemble:
    """The graph of ``tables`` for the client encoding ``enc``: comparisons, leaf selection, scores."""
    if isinstance(tables, _PairedTables):
        return _build_paired(tables, enc)
    g = GraphBuilder()
    x = g.input("x", *enc.bounds())
    parts = COMPARISONS[enc.kind](g, x, enc, list(tables.pairs))
    indicator = leaf_selection(g, parts, tables.B0, tables.B1)
    g.output(scores(g, indicator, tables.V, tables.maxima), "scores")
    stages = {"encoding": describe_encoding(enc), "comparisons": describe_comparisons(enc, parts, g), **tables.stages}
    n_leaves = tables.B0.shape[1]
    return LoweredEnsemble(
        g.build(),
        enc,
        tables.output_quantizer,
        tables.bias,
        tables.combine,
        tables.n_comparisons,
        n_leaves,
        stages,
        tables.leaf_bits,
    )
