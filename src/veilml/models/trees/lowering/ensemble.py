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

Steps 3 and 4 have two more strategies, the *value* leaf stages: one lookup per pair of sibling
leaves (on twice the failed tests above their parent plus the parent's bit), or per subtree of
``k`` tests (on ``2**k`` times the failed tests above it plus its tests' bits, in 5 bits), that
returns the leaf value itself, so the client decrypts the score alone (:func:`lower_candidates`
offers those worth trying; the estimators compile each and keep the cheapest). Then an
ensemble's leaves are quantized on one scale chosen so that the summed score is an
``(n_bits + 1)``-bit integer (:func:`.leaf_values.quantize_leaves`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from veilml.compiler import Graph, GraphBuilder, InputEncoding, bit_width
from veilml.compiler.cost import CostModel, graph_cost
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import (
    code_bits,
    complementary,
    digits,
    interval_comparisons,
    leaf_tests,
    quantize_leaves,
    right_code,
    with_complement,
)
from veilml.models.trees.lowering.paired import PairedTables, paired_tables
from veilml.models.trees.lowering.stages import (
    COMPARISONS,
    describe_comparisons,
    describe_encoding,
    leaf_selection,
    paired_values,
    scores,
)
from veilml.quantization import UniformQuantizer

__all__ = ["ENCODINGS", "LoweredEnsemble", "candidate_encodings", "lower_candidates", "lower_ensemble", "right_code"]


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
    leaf_lookups: Literal["indicators", "paired", "subtrees", "auto"] = "indicators",
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


#: the leaf stages ``leaf_lookups`` names
LEAF_LOOKUPS = ("indicators", "paired", "subtrees", "auto")
#: the paired stage is worth compiling when it needs at most this share of the indicators' lookups
PAIRED_WORTH_TRYING = 0.8
#: the subtree stage's lookups are at most this wide, and it is worth compiling when it needs at most
#: SUBTREES_WORTH_TRYING of the fewest lookups of the stages before it. Measured on
#: ``benchmarks/trees.py``'s models (concrete 2.11, default p_error): a 5-bit lookup costs 1.7-2.3x
#: the complexity of a 3-bit one, and 4-bit or 6-bit subtrees cost more than 5-bit ones everywhere
#: (the diabetes regressor: 12 lookups 9.1e8 at 4 bits, 8 lookups 8.3e8 at 5, 27 indicators 1.2e9).
SUBTREE_BITS = 5
SUBTREES_WORTH_TRYING = 0.6


def lower_candidates(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    encoding: Literal["thermometer", "identity", "chunked", "thresholds", "auto"] | InputEncoding = "thermometer",
    cost_model: CostModel | None = None,
    leaf_lookups: Literal["indicators", "paired", "subtrees", "auto"] = "auto",
) -> list[LoweredEnsemble]:
    """The lowerings worth compiling, for each leaf stage that ``leaf_lookups`` names.

    ``"indicators"``: one ``[failed tests == 0]`` lookup per leaf, the values applied by a clear
    matrix in digits (small, cheap lookups). ``"paired"``: one lookup per pair of sibling leaves
    that returns the leaf value itself (half the lookups on full trees, but the lookups' outputs
    carry the whole score, so concrete picks costlier parameters). ``"subtrees"``: one lookup of
    up to 5 bits per subtree of as many tests as fit (3 under 3 failed tests, 5 at the root: a
    quarter to a third of the lookups on full trees, each 1.7-2.3x as costly). ``"auto"``: the
    indicators, then the paired stage if it saves at least a fifth of the lookups, then the
    subtrees if they save at least two fifths of the fewest so far. The IR's cost function does
    not model the noise that decides between them, so the caller compiles each candidate and keeps
    the one with the lowest complexity (:meth:`veilml.TreeClassifier.compile` does).
    """
    if leaf_lookups not in LEAF_LOOKUPS:
        raise ValueError(f"leaf_lookups must be one of {', '.join(map(repr, LEAF_LOOKUPS))}, got {leaf_lookups!r}")
    score_rule = leaf_bits is None  # with a value stage, the (n_bits + 1)-bit score (see leaf_values.quantize_leaves)
    indicators = _leaf_tables(ensemble, n_bits, leaf_bits, score_rule)
    width = bit_width(0, max(1, int((indicators.B0 + indicators.B1).sum(axis=0).max(initial=0))))
    value_stages: list[PairedTables] = []
    for stage, max_tests, bits, share in (
        ("paired", 1, width, PAIRED_WORTH_TRYING),
        ("subtrees", SUBTREE_BITS, SUBTREE_BITS, SUBTREES_WORTH_TRYING),
    ):
        if leaf_lookups not in (stage, "auto"):
            continue
        tables = paired_tables(ensemble, n_bits, leaf_bits, bits, score_rule, max_tests)
        if tables is None and leaf_lookups == stage:
            raise ValueError(f"leaf_lookups={stage!r} cannot lower this ensemble (a leaf has too many tests); use 'indicators'")
        fewest = min([indicators.B0.shape[1]] + [len(v.tables) for v in value_stages])
        if tables is not None and (leaf_lookups == stage or len(tables.tables) <= share * fewest):
            value_stages.append(tables)
    if not value_stages:  # indicators alone: each tree's leaves keep n_bits (digits keep every encrypted value narrow)
        variants: list[_LeafTables | PairedTables] = [_leaf_tables(ensemble, n_bits, leaf_bits) if score_rule else indicators]
    else:
        variants = ([indicators] if leaf_lookups == "auto" else []) + value_stages
    return [_lower_stage(tables, ensemble, n_bits, encoding, cost_model) for tables in variants]


def _lower_stage(
    tables: _LeafTables | PairedTables,
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
    complement = complementary(ensemble)
    outputs = [1] if complement else list(range(ensemble.n_outputs))
    leaf_values, output_quantizer, bias = quantize_leaves(ensemble, n_bits, leaf_bits, outputs, score_rule)

    comparisons: dict[tuple[int, int], int] = {}  # (feature, code) -> comparison index
    must_be_one: list[list[int]] = []  # per reachable leaf: comparisons that must hold
    must_be_zero: list[list[int]] = []  # per reachable leaf: comparisons that must fail
    values, tree_of_leaf = [], []
    for t, (tree, tree_values) in enumerate(zip(ensemble.trees, leaf_values)):
        codes = right_code(tree.threshold, tree.strict)
        for leaf, path in tree.leaf_paths():
            if not tree_values[leaf].any():
                continue  # a leaf worth 0 adds nothing: no lookup (the smallest leaf of each tree)
            intervals = leaf_tests(codes, tree, path, qmin, qmax)
            if intervals is None:
                continue  # contradictory tests: this leaf is never reached
            hold, fail = interval_comparisons(intervals, qmin, qmax)
            ones = [comparisons.setdefault(pair, len(comparisons)) for pair in hold]
            zeros = [comparisons.setdefault(pair, len(comparisons)) for pair in fail]
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
    n_digits = -(-code_bits(leaf_values) // digit_bits)
    V = digits(np.asarray(values, dtype=np.int64).reshape(n_leaves, len(outputs)), digit_bits, n_digits)
    tree_of_leaf = np.asarray(tree_of_leaf)
    maxima = sum(V[tree_of_leaf == t].max(axis=0) for t in np.unique(tree_of_leaf))
    combine = np.kron((1 << (digit_bits * np.arange(n_digits)))[:, None], np.eye(len(outputs), dtype=np.int64))
    if complement:
        output_quantizer, bias, combine = with_complement(ensemble, output_quantizer, bias, combine)
    stages = {
        "leaf selection": f"{n_leaves} leaf lookups [failed tests == 0] on {bit_width(0, max_failed)} bits",
        "scores": f"{len(outputs)} output(s) x {n_digits} digit(s) of {digit_bits} bit(s), summed over "
        f"{len(ensemble.trees)} tree(s) in FHE" + ("; output 0 derived by the client" if complement else ""),
    }
    pairs = tuple(sorted(comparisons, key=comparisons.get)) or ((0, qmax),)  # a constant model still reads x
    return _LeafTables(
        pairs, B0, B1, V, maxima, output_quantizer, bias, combine.astype(np.int64), n_cmp, stages, code_bits(leaf_values)
    )


def _build_paired(tables: PairedTables, enc: InputEncoding) -> LoweredEnsemble:
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


def _build(tables: _LeafTables | PairedTables, enc: InputEncoding) -> LoweredEnsemble:
    """The graph of ``tables`` for the client encoding ``enc``: comparisons, leaf selection, scores."""
    if isinstance(tables, PairedTables):
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
