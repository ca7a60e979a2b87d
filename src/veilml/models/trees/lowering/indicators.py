"""The indicators leaf stage's tables: one ``[failed tests == 0]`` lookup per leaf, the leaf values applied
by a clear matrix of digits (see :func:`~.stages.leaf_selection` and :func:`~.stages.scores`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.compiler import GraphBuilder
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import digit_values
from veilml.models.trees.lowering.stages import Parts, leaf_selection, scores
from veilml.models.trees.lowering.tables import LeafTables, QuantizedLeaves
from veilml.models.trees.lowering.walk import lookup_bits, tree_maxima, walk_ensemble

__all__ = ["IndicatorTables", "indicator_tables"]


@dataclass(frozen=True)
class IndicatorTables(LeafTables):
    """``A0`` / ``A1`` hold 1 where a leaf's comparison must fail / hold; ``V`` its value's digits."""

    V: np.ndarray  # (leaves, outputs x digits): leaf-value digits
    low_error_only: bool = False  # worth compiling only under a tight error budget (see indicator_tables)

    @property
    def n_lookups(self) -> int:
        return self.A0.shape[1]

    def leaf_stage(self, g: GraphBuilder, parts: Parts) -> int:
        return scores(g, leaf_selection(g, parts, self.A0, self.A1), self.V, self.maxima)


def indicator_tables(
    ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, score_rule: bool = False, digit_bits: int | None = None
) -> IndicatorTables:
    """One lookup per reachable leaf worth more than 0, in each tree's node order.

    ``digit_bits``: the width of the leaf values' digits (None: one bit narrower than the lookups' input). One-bit
    digits put the least noise into the summed outputs, which matters under a tight error budget only: on wine's
    3-class 20 x 4 forest at a global p_error of 1e-10, complexity 1.26e10 with 2-bit digits, 8.6e9 with 1-bit
    ones; at 1e-5 both 8.09e9 (and twice the outputs to send back). Such tables are marked ``low_error_only``.
    """
    leaves = QuantizedLeaves.of(ensemble, n_bits, leaf_bits, score_rule)
    walk = walk_ensemble(ensemble, leaves.values, n_bits, max_tests=0, width=None, in_node_order=True)
    assert walk is not None  # lone leaves always fit when there is no width
    values, tree_of_leaf = [group.values[0] for group in walk.groups], walk.tree_of_group
    if not values:  # every leaf is worth 0: one test-free "leaf" keeps the graph well formed
        values, tree_of_leaf = [leaves.values[0][0]], [0]
    n_leaves, n_outputs = len(values), len(leaves.outputs)
    # Leaf values are split into digits one bit narrower than the lookup's input: the lookups'
    # outputs and the encrypted sums then stay at that small precision, and the small weights
    # keep the noise low enough for the cheapest parameters (measured on breast cancer, depth 5:
    # complexity 6.3e8 with 2-bit digits, 8.4e8 with 3-bit, 1.2e9 with one 6-bit value).
    # The client recombines the digits.
    input_bits = lookup_bits(walk.A0, walk.A1)
    low_error_only = digit_bits is not None and digit_bits < max(1, input_bits - 1)
    digit_bits = max(1, input_bits - 1) if digit_bits is None else digit_bits
    n_digits = -(-leaves.bits // digit_bits)
    V, combine = digit_values(values, n_outputs, digit_bits, n_digits)
    output_quantizer, bias, combine = leaves.output_steps(ensemble, combine)
    stages = {
        "leaf selection": f"{n_leaves} leaf lookups [failed tests == 0] on {input_bits} bits",
        "scores": leaves.summed(ensemble, f"{n_outputs} output(s) x {n_digits} digit(s) of {digit_bits} bit(s)"),
    }
    return IndicatorTables(
        walk.pairs,
        walk.A0,
        walk.A1,
        tree_maxima(V, tree_of_leaf),
        output_quantizer,
        bias,
        combine,
        walk.n_comparisons,
        n_leaves,
        stages,
        leaves.bits,
        V,
        low_error_only,
    )
