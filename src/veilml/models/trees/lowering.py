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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...compiler import Graph, GraphBuilder, InputEncoding, bit_width
from ...compiler.cost import CostModel, graph_cost
from ...quantization import UniformQuantizer
from .ensemble import TreeEnsemble
from .stages import COMPARISONS, describe_comparisons, describe_encoding, leaf_selection, scores

__all__ = ["ENCODINGS", "LoweredEnsemble", "candidate_encodings", "lower_ensemble", "right_code"]


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


def _quantize_leaves(
    ensemble: TreeEnsemble, leaf_bits: int, outputs: list[int]
) -> tuple[list[np.ndarray], UniformQuantizer, np.ndarray]:
    """Per-tree non-negative integer leaf values of ``outputs`` and the quantizer that maps their sum back.

    Each tree's smallest leaf value (per output) moves into the public float bias first, so the
    shared scale covers the widest tree's spread, not an offset one tree carries (LightGBM puts
    its initial score in the first tree's leaves: 3 bits of leaf precision were lost to it).
    """
    trees = [(tree, tree.value[:, outputs]) for tree in ensemble.trees]
    lows = [value[tree.is_leaf].min(axis=0) for tree, value in trees]
    shifted = [value - low for (_, value), low in zip(trees, lows)]
    values = np.concatenate([v[t.is_leaf] for v, (t, _) in zip(shifted, trees)])
    quantizer = UniformQuantizer.calibrate(values, leaf_bits, axis=1)
    per_tree, offsets = [], np.zeros(len(outputs), dtype=np.int64)
    for (tree, _), value in zip(trees, shifted):
        codes = quantizer.quantize(value, warn=False)
        low = codes[tree.is_leaf].min(axis=0)  # a public per-tree shift: the smallest leaf costs 0
        per_tree.append(codes - low)
        offsets += low
    n_trees = len(ensemble.trees)
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
    leaf_bits: int,
    encoding: Literal["thermometer", "identity", "chunked", "thresholds", "auto"] | InputEncoding = "thermometer",
    cost_model: CostModel | None = None,
) -> LoweredEnsemble:
    """Lower ``ensemble`` whose thresholds are on the unsigned ``n_bits`` code scale.

    ``encoding`` is what the client encrypts (:class:`~veilml.compiler.InputEncoding`); with
    ``"auto"`` (or ``"chunked"``, whose split between the chunks is then chosen), the graph is
    built for every candidate and the one whose estimated time per row (:func:`~veilml.compiler.
    cost.graph_cost` under ``cost_model``) is smallest wins; ties go to the earlier of
    :data:`ENCODINGS`. ``"thresholds"`` (never chosen by ``"auto"``) encrypts only the
    comparisons the model makes: the client then holds the model's split points.
    """
    tables = _leaf_tables(ensemble, n_bits, leaf_bits)
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


def _leaf_tables(ensemble: TreeEnsemble, n_bits: int, leaf_bits: int) -> _LeafTables:
    qmin, qmax = 0, 2**n_bits - 1
    complement = _complementary(ensemble)
    outputs = [1] if complement else list(range(ensemble.n_outputs))
    leaf_values, output_quantizer, bias = _quantize_leaves(ensemble, leaf_bits, outputs)

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
    n_digits = -(-leaf_bits // digit_bits)
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
    return _LeafTables(pairs, B0, B1, V, maxima, output_quantizer, bias, combine.astype(np.int64), n_cmp, stages)


def _build(tables: _LeafTables, enc: InputEncoding) -> LoweredEnsemble:
    """The graph of ``tables`` for the client encoding ``enc``: comparisons, leaf selection, scores."""
    g = GraphBuilder()
    x = g.input("x", *enc.bounds())
    parts = COMPARISONS[enc.kind](g, x, enc, list(tables.pairs))
    indicator = leaf_selection(g, parts, tables.B0, tables.B1)
    g.output(scores(g, indicator, tables.V, tables.maxima), "scores")
    stages = {"encoding": describe_encoding(enc), "comparisons": describe_comparisons(enc, parts, g), **tables.stages}
    n_leaves = tables.B0.shape[1]
    return LoweredEnsemble(
        g.build(), enc, tables.output_quantizer, tables.bias, tables.combine, tables.n_comparisons, n_leaves, stages
    )
