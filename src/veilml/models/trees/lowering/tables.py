"""What every leaf stage's tables share: the quantized leaves they start from, and the fields the graph
builder reads (:class:`LeafTables`; the stages: :mod:`.indicators`, :mod:`.values`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from veilml.compiler import GraphBuilder
from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import code_bits, complementary, quantize_leaves, with_complement
from veilml.models.trees.lowering.stages import Parts
from veilml.models.trees.lowering.walk import lookup_bits
from veilml.quantization import UniformQuantizer

__all__ = ["LeafTables", "QuantizedLeaves"]


@dataclass(frozen=True)
class QuantizedLeaves:
    """Every tree's non-negative integer leaf values for the outputs computed encrypted, and the
    quantizer and bias that map their sum back (see :func:`~.leaf_values.quantize_leaves`)."""

    outputs: list[int]  # 1..K-1 when output 0 is derived by the client (see ``complementary``)
    values: list[np.ndarray]  # per tree: (nodes, outputs)
    output_quantizer: UniformQuantizer
    bias: np.ndarray
    complement: bool

    @classmethod
    def of(cls, ensemble: TreeEnsemble, n_bits: int, leaf_bits: int | None, score_rule: bool) -> QuantizedLeaves:
        complement = complementary(ensemble)
        outputs = list(range(1 if complement else 0, ensemble.n_outputs))
        values, quantizer, bias = quantize_leaves(ensemble, n_bits, leaf_bits, outputs, score_rule, shared_scale=complement)
        return cls(outputs, values, quantizer, bias, complement)

    @property
    def bits(self) -> int:
        """Bits of the largest quantized leaf value of any tree."""
        return code_bits(self.values)

    def output_steps(self, ensemble: TreeEnsemble, combine: np.ndarray) -> tuple[UniformQuantizer, np.ndarray, np.ndarray]:
        """The client's output quantizer, bias and combine matrix (every output, with a complement)."""
        quantizer, bias = self.output_quantizer, self.bias
        if self.complement:
            quantizer, bias, combine = with_complement(ensemble, quantizer, bias, combine)
        return quantizer, bias, combine.astype(np.int64)

    def summed(self, ensemble: TreeEnsemble, what: str) -> str:
        """The scores stage in words: ``what`` summed over the trees."""
        derived = "; output 0 derived by the client" if self.complement else ""
        return f"{what}, summed over {len(ensemble.trees)} tree(s) in FHE{derived}"


@dataclass(frozen=True)
class LeafTables(ABC):
    """What a leaf stage computes once, whatever the encoding: the comparisons, the coefficients of each
    lookup's input ``t = c @ A0 + (1 - c) @ A1``, and what the client needs around the scores."""

    pairs: tuple[tuple[int, int], ...]  # (feature, code) of each comparison, in index order
    A0: np.ndarray  # (comparisons, groups): coefficient of c_j (a lone leaf: 1 where it must fail)
    A1: np.ndarray  # (comparisons, groups): coefficient of 1 - c_j (a lone leaf: 1 where it must hold)
    maxima: np.ndarray  # largest sum of each encrypted output over the trees
    output_quantizer: UniformQuantizer
    bias: np.ndarray
    combine: np.ndarray
    n_comparisons: int
    n_leaves: int
    stages: dict[str, str]  # the encoding-independent stages, in words
    leaf_bits: int  # bits of the largest quantized leaf value of any tree

    @property
    def low_error_only(self) -> bool:
        """Worth compiling only under a tight error budget (see :func:`~.ensemble.worth_compiling`)."""
        return False

    @property
    def input_bits(self) -> int:
        """Bits of the lookups' input."""
        return lookup_bits(self.A0, self.A1)

    @property
    @abstractmethod
    def n_lookups(self) -> int:
        """Lookups of the leaf stage."""

    @abstractmethod
    def leaf_stage(self, g: GraphBuilder, parts: Parts) -> int:
        """The graph from the comparison bits ``parts`` to the summed scores."""
