"""TreeEnsemble -> integer IR, in the named stages of :mod:`.stages`.

The whole ensemble becomes four steps; with the thermometer encoding the only lookups are one per
reachable leaf:

1. comparison bits ``c_j = [q_f >= k]``, one per distinct (feature, code) pair in the ensemble:
   a free gather of thermometer bits (``encoding="thermometer"``), a gather or one 2-bit lookup
   on chunked thermometer bits (``"chunked"``), or one encrypted comparison each on the raw
   quantized values (``"identity"``); ``"auto"`` lowers each and keeps the cheapest by the IR's
   cost function (:mod:`veilml.compiler.cost`);
2. for each leaf, the number of tests on its path that the sample fails,
   ``u = c @ A0 + (1 - c) @ A1`` (clear matrix products: free). A path's tests on one feature are first merged into one
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

Under a tight error budget (a global p_error below :data:`LOW_ERROR`) wide lookups and the noise of many
lookups summed into one output cost more, and two more candidates are compiled (:func:`worth_compiling`): the
indicators with one-bit digits, and the prefixes (:mod:`.prefixes`: every lookup on two bits).

Every leaf stage's tables come from one walk over the trees' paths (:mod:`.walk`): the indicators'
(:mod:`.indicators`), the pairs' and the subtrees' (:mod:`.values`); :func:`build` turns any of them
into the graph for one input encoding, whose comparison stage :data:`.stages.COMPARISONS` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from veilml.compiler import Configuration, Graph, GraphBuilder, InputEncoding
from veilml.compiler.cost import CostModel, graph_cost
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.indicators import indicator_tables
from veilml.models.trees.lowering.options import EncodingChoice, LeafStage, candidate_encodings
from veilml.models.trees.lowering.prefixes import prefix_tables
from veilml.models.trees.lowering.stages import COMPARISONS, describe_comparisons
from veilml.models.trees.lowering.tables import LeafTables
from veilml.models.trees.lowering.values import ValueTables, pair_tables, subtree_tables
from veilml.quantization import UniformQuantizer

__all__ = [
    "LOW_ERROR",
    "VALUE_STAGES",
    "LoweredEnsemble",
    "ValueStage",
    "build",
    "leaf_stage_tables",
    "lower_candidates",
    "lower_ensemble",
    "worth_compiling",
]


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
    low_error_only: bool = False  # worth compiling only under an error budget below LOW_ERROR (worth_compiling)


#: under error budgets below this, wide lookups and the noise of many lookups summed into one output cost more:
#: the indicators with one-bit digits and the prefixes (2-bit lookups) are compiled too (see leaf_stage_tables)
LOW_ERROR = 1e-7


def worth_compiling(low_error_only: bool, configuration: Configuration) -> bool:
    """Whether a lowering marked ``low_error_only`` (or not) is worth compiling under ``configuration``
    (a :class:`~veilml.compiler.Configuration`): its ``global_p_error``, else its per-lookup ``p_error``, is the budget."""
    budget = configuration.global_p_error if configuration.global_p_error is not None else configuration.p_error
    return not low_error_only or (budget is not None and budget < LOW_ERROR)


def lower_ensemble(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    encoding: EncodingChoice | str | InputEncoding = EncodingChoice.THERMOMETER,
    cost_model: CostModel | None = None,
    leaf_lookups: LeafStage | str = LeafStage.INDICATORS,
) -> LoweredEnsemble:
    """Lower ``ensemble`` whose thresholds are on the unsigned ``n_bits`` code scale.

    ``encoding`` is what the client encrypts (:class:`~veilml.compiler.InputEncoding`); with
    ``"auto"`` (or ``"chunked"``, whose split between the chunks is then chosen), the graph is
    built for every candidate and the one whose estimated time per row (:func:`~veilml.compiler.
    cost.graph_cost` under ``cost_model``) is smallest wins; ties go to the earlier of
    :data:`.options.ENCODINGS`. ``"thresholds"`` (never chosen by ``"auto"``) encrypts only the
    comparisons the model makes: the client then holds the model's split points.

    ``leaf_lookups`` is the leaf stage (see :func:`lower_candidates`); with ``"auto"`` the first
    candidate is returned.
    """
    return lower_candidates(ensemble, n_bits, leaf_bits, encoding, cost_model, leaf_lookups)[0]


def lower_candidates(
    ensemble: TreeEnsemble,
    n_bits: int,
    leaf_bits: int | None,
    encoding: EncodingChoice | str | InputEncoding = EncodingChoice.THERMOMETER,
    cost_model: CostModel | None = None,
    leaf_lookups: LeafStage | str = LeafStage.AUTO,
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
    the one with the lowest complexity (the estimators' ``compile`` does).
    """
    stage = LeafStage.parse(leaf_lookups)
    choice = encoding if isinstance(encoding, InputEncoding) else EncodingChoice.parse(encoding)
    variants = leaf_stage_tables(ensemble, n_bits, leaf_bits, stage)
    return [_cheapest(tables, ensemble.n_features, n_bits, choice, cost_model) for tables in variants]


@dataclass(frozen=True)
class ValueStage:
    """A value leaf stage: how its tables are built, and when ``leaf_lookups="auto"`` tries it."""

    stage: LeafStage
    tables: Callable[[TreeEnsemble, int, int | None, int, bool], ValueTables | None]  # (..., indicators' bits, score_rule)
    worth_trying: float  # tried when it needs at most this share of the fewest lookups of the stages before it


#: the value stages, in the order ``"auto"`` tries them. Pairs read the indicators' width; subtrees
#: :data:`~.values.SUBTREE_BITS`, and are worth the wider lookups only when they save two fifths
VALUE_STAGES = (
    ValueStage(LeafStage.PAIRED, lambda e, n, lb, width, rule: pair_tables(e, n, lb, width, rule), 0.8),
    ValueStage(LeafStage.SUBTREES, lambda e, n, lb, width, rule: subtree_tables(e, n, lb, rule), 0.6),
)


def leaf_stage_tables(ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, stage: LeafStage) -> list[LeafTables]:
    """The tables of each leaf stage worth compiling for ``stage`` (see :func:`lower_candidates`)."""
    score_rule = leaf_bits is None  # with a value stage, the (n_bits + 1)-bit score (see leaf_values.quantize_leaves)
    if stage is LeafStage.PREFIXES:
        tables = prefix_tables(ensemble, n_bits, leaf_bits)
        if tables is None:
            raise ValueError(
                "leaf_lookups='prefixes' cannot lower this ensemble (no leaf has more than 3 tests, or one has too many "
                "past any ancestor); use 'indicators'"
            )
        return [replace(tables, low_error_only=False)]
    indicators = indicator_tables(ensemble, n_bits, leaf_bits, score_rule)
    value_stages: list[LeafTables] = []
    for value_stage in VALUE_STAGES:
        if stage not in (value_stage.stage, LeafStage.AUTO):
            continue
        tables = value_stage.tables(ensemble, n_bits, leaf_bits, indicators.input_bits, score_rule)
        if tables is None and stage is value_stage.stage:
            raise ValueError(
                f"leaf_lookups={stage.value!r} cannot lower this ensemble (a leaf has too many tests); use 'indicators'"
            )
        fewest = min([indicators.n_lookups] + [v.n_lookups for v in value_stages])
        if tables is not None and (stage is value_stage.stage or tables.n_lookups <= value_stage.worth_trying * fewest):
            value_stages.append(tables)
    if stage is not LeafStage.AUTO and value_stages:
        return value_stages
    if value_stages:
        return [indicators, *value_stages, *_low_error_stages(ensemble, n_bits, leaf_bits, indicators, score_rule, stage)]
    # indicators alone: each tree's leaves keep n_bits (digits keep every encrypted value narrow)
    indicators = indicator_tables(ensemble, n_bits, leaf_bits) if score_rule else indicators
    return [indicators, *_low_error_stages(ensemble, n_bits, leaf_bits, indicators, False, stage)]


def _low_error_stages(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, indicators: LeafTables, score_rule: bool, stage: LeafStage
) -> list[LeafTables]:
    """The stages worth compiling only under a tight error budget (``low_error_only``): the indicators with one-bit
    digits where more than one tree sums into wider digits, and (``"auto"``) the prefixes where a leaf has more than
    3 tests."""
    if indicators.input_bits <= 2:
        return []
    fine = [indicator_tables(ensemble, n_bits, leaf_bits, score_rule, digit_bits=1)] if len(ensemble.trees) > 1 else []
    prefixes = prefix_tables(ensemble, n_bits, leaf_bits, score_rule) if stage is LeafStage.AUTO else None
    return fine + ([] if prefixes is None else [prefixes])


def _cheapest(
    tables: LeafTables, n_features: int, n_bits: int, encoding: EncodingChoice | InputEncoding, cost_model: CostModel | None
) -> LoweredEnsemble:
    """``tables`` built for the encoding ``encoding`` names, the cheapest by the IR's cost function."""
    if isinstance(encoding, InputEncoding):
        return build(tables, encoding)
    built = [build(tables, enc) for enc in candidate_encodings(n_features, n_bits, encoding, tables.pairs)]
    return min(built, key=lambda low: graph_cost(low.graph).estimate(cost_model)["total_s"])


def build(tables: LeafTables, enc: InputEncoding) -> LoweredEnsemble:
    """The graph of ``tables`` for the client encoding ``enc``: comparisons, then the leaf stage's lookups and scores."""
    g = GraphBuilder()
    x = g.input("x", *enc.bounds())
    strategy = COMPARISONS[enc.kind]
    parts = strategy.compute(g, x, enc, list(tables.pairs))
    g.output(tables.leaf_stage(g, parts), "scores")
    stages = {"encoding": strategy.describe(enc), "comparisons": describe_comparisons(enc, parts, g), **tables.stages}
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
        tables.low_error_only,
    )
