"""A tree ensemble as a slot program (:mod:`veilml.runtime.batch.program`): the batched path's lowering.

One row per slot. The client encrypts each feature's quantized code ``q`` (``n_bits`` bits) as bits, in one of
two encodings (:mod:`veilml.runtime.batch.encoding`): ``thermometer`` (``[q >= k]`` for every code ``k``: every
comparison of the model is one of the encrypted bits, free) and ``digits`` (``q = B h + l``, the thermometer
bits of each digit). In digits, a comparison ``[q >= B a + b]`` is
``[h >= a + 1] + ([h >= a] - [h >= a + 1]) [l >= b]``: one product (none when ``b = 0``), one more level of depth.

Whatever the encoding, every bit is encrypted, so the client learns nothing of which comparisons the model
makes. Each tree is then a multiplexer, bottom up: a node's value is ``g_left + c (g_right - g_left)`` with
``c = [q_f >= k]`` (its test sends a row right), a leaf's is its quantized value, so a node whose children are
both leaves costs no product; with more than one output (a forest's K - 1 class scores), each tree's leaves get
indicators top down instead (``ind_right = ind c``, ``ind_left = ind - ind_right``: one product per internal node below the root,
whatever the number of outputs) and the scores are clear combinations of them. With ``split = k`` a tree's top
``k`` levels are path indicators (balanced products of their conditions) above multiplexers, one level shallower
for a depth-5 tree in digits; :func:`best_tree_program` picks ``k`` by the cost model. The trees' scores are summed
in the ciphertext. The leaf values are the same quantized integers the TFHE path sums, so the decrypted
sums decode exactly as its ``disable`` mode's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import right_code
from veilml.runtime.batch.encoding import BatchEncoding, bits_per_feature, split_bits
from veilml.runtime.batch.plan import batch_seconds
from veilml.runtime.batch.program import Linear, ProgramBuilder, SlotProgram

__all__ = ["TreeProgram", "best_tree_program", "part_programs", "tree_groups", "tree_program"]


@dataclass(frozen=True)
class TreeProgram:
    """The slot program of an ensemble and the encoding its inputs are in."""

    program: SlotProgram
    encoding: BatchEncoding
    n_bits: int
    n_features: int
    split: int = 0  # the levels of each tree evaluated as path indicators (:func:`_split_multiplexer`)

    @property
    def bits_per_feature(self) -> int:
        return bits_per_feature(self.encoding, self.n_bits)

    @property
    def depth(self) -> int:
        return self.program.depth

    @property
    def n_inputs(self) -> int:
        return self.program.n_inputs

    @property
    def n_products(self) -> int:
        return self.program.n_products


class _Comparisons:
    """``[q_f >= k]`` as linear forms over the inputs (products made once, in the builder)."""

    def __init__(self, builder: ProgramBuilder, encoding: BatchEncoding, n_bits: int) -> None:
        self.builder, self.encoding, self.n_bits = builder, encoding, n_bits
        self.per_feature = bits_per_feature(encoding, n_bits)
        self._cache: dict[tuple[int, int], Linear] = {}

    def __call__(self, feature: int, code: int) -> Linear:
        qmax = 2**self.n_bits - 1
        if code <= 0:
            return Linear.constant(1)
        if code > qmax:
            return Linear.constant(0)
        key = (feature, code)
        if key not in self._cache:
            self._cache[key] = self._make(feature, code)
        return self._cache[key]

    def _make(self, feature: int, code: int) -> Linear:
        base = feature * self.per_feature
        if self.encoding is BatchEncoding.THERMOMETER:
            return self.builder.input(base + code - 1)
        high, low = split_bits(self.n_bits)

        def h_at_least(a: int) -> Linear:
            if a <= 0:
                return Linear.constant(1)
            return Linear.constant(0) if a >= 2**high else self.builder.input(base + a - 1)

        a, b = divmod(code, 2**low)
        if b == 0:
            return h_at_least(a)
        l_bit = self.builder.input(base + 2**high - 1 + b - 1)
        above = h_at_least(a + 1)
        return above + self.builder.multiply(h_at_least(a) - above, l_bit)


def tree_program(
    ensemble: TreeEnsemble, leaf_values: list[np.ndarray], n_bits: int, encoding: BatchEncoding | str, split: int = 0
) -> TreeProgram:
    """The slot program computing, per output, the sum over trees of the quantized value of the leaf each row
    reaches. ``ensemble``'s thresholds are on the ``n_bits`` code scale; ``leaf_values`` are per tree
    (nodes, outputs) non-negative integers (:class:`~.lowering.tables.QuantizedLeaves`). ``split``: the levels
    of each tree evaluated as path indicators above the multiplexers (:func:`_split_multiplexer`)."""
    encoding = BatchEncoding(encoding)
    builder = ProgramBuilder(ensemble.n_features * bits_per_feature(encoding, n_bits))
    compare = _Comparisons(builder, encoding, n_bits)
    n_outputs = leaf_values[0].shape[1] if leaf_values else 1
    totals = [Linear.constant(0)] * n_outputs
    for tree, values in zip(ensemble.trees, leaf_values):
        codes = right_code(tree.threshold, tree.strict)
        values = np.asarray(values, dtype=np.int64)
        scores = (
            _split_multiplexer(tree, codes, values, compare, builder, split)
            if n_outputs == 1
            else _indicators(tree, codes, values, compare, builder)
        )
        totals = [total + score for total, score in zip(totals, scores)]
    return TreeProgram(builder.build(totals), encoding, n_bits, ensemble.n_features, split)


def best_tree_program(
    ensemble: TreeEnsemble, leaf_values: list[np.ndarray], n_bits: int, encoding: BatchEncoding | str
) -> TreeProgram:
    """:func:`tree_program` at the split (0 to 3 levels) the cost model rates fastest per row (:func:`batch_seconds`):
    a split that saves a level saves a prime, and so encryption, upload and product time, for a few more products."""
    n_outputs = leaf_values[0].shape[1] if leaf_values else 1
    best, error = None, None
    for split in range(4 if n_outputs == 1 else 1):  # 2+ outputs: leaf indicators, no split
        tp = tree_program(ensemble, leaf_values, n_bits, encoding, split)
        try:
            seconds = batch_seconds(tp, 2 * 16384)  # whole batches at either degree
        except ValueError as too_deep:
            error = error or too_deep
            continue
        if best is None or seconds < best[0]:
            best = (seconds, tp)
    if best is None:
        raise error
    return best[1]


def _multiplexer(
    tree, codes: np.ndarray, values: np.ndarray, compare: _Comparisons, builder: ProgramBuilder, root: int = 0
) -> list[Linear]:
    """The subtree's value per output, bottom up (post-order without recursion: deep trees)."""
    done: dict[int, list[Linear]] = {}
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        left, right = int(tree.left[node]), int(tree.right[node])
        if left < 0:
            done[node] = [Linear.constant(int(v)) for v in values[node]]
            continue
        if not expanded:
            stack += [(node, True), (right, False), (left, False)]
            continue
        c = compare(int(tree.feature[node]), int(codes[node]))
        gl, gr = done.pop(left), done.pop(right)
        done[node] = [a + builder.multiply(c, b - a) for a, b in zip(gl, gr)]
    return done[root]


def _split_multiplexer(
    tree, codes: np.ndarray, values: np.ndarray, compare: _Comparisons, builder: ProgramBuilder, split: int
) -> list[Linear]:
    """The tree's value as the sum, over the nodes ``split`` levels down, of the indicator of the path to the node
    (a balanced product of its conditions) times the node's :func:`_multiplexer` value. A multiplexer chain is
    as deep as the tree; this is ``max(log2(split), height - split) + 1`` products deep: one level less for a
    depth-5 tree in digits at ``split = 2``, for a few more products."""
    total = [Linear.constant(0)] * values.shape[1]
    stack: list[tuple[int, tuple[Linear, ...]]] = [(0, ())]
    while stack:
        node, path = stack.pop()
        left, right = int(tree.left[node]), int(tree.right[node])
        if left >= 0 and len(path) < split:
            c = compare(int(tree.feature[node]), int(codes[node]))
            stack += [(right, (*path, c)), (left, (*path, Linear.constant(1) - c))]
            continue
        weight = list(path) or [Linear.constant(1)]
        while len(weight) > 1:  # balanced: pairs of pairs
            weight = [
                builder.multiply(*weight[i : i + 2]) if i + 1 < len(weight) else weight[i] for i in range(0, len(weight), 2)
            ]
        below = _multiplexer(tree, codes, values, compare, builder, node)
        total = [t + builder.multiply(weight[0], v) for t, v in zip(total, below)]
    return total


def _indicators(tree, codes: np.ndarray, values: np.ndarray, compare: _Comparisons, builder: ProgramBuilder) -> list[Linear]:
    """The tree's value per output as clear combinations of leaf indicators, made top down."""
    scores = [Linear.constant(0)] * values.shape[1]
    stack = [(0, Linear.constant(1))]
    while stack:
        node, reached = stack.pop()
        left, right = int(tree.left[node]), int(tree.right[node])
        if left < 0:
            scores = [s + reached.scaled(int(v)) for s, v in zip(scores, values[node])]
            continue
        goes_right = builder.multiply(reached, compare(int(tree.feature[node]), int(codes[node])))
        stack += [(right, goes_right), (left, reached - goes_right)]
    return scores


def tree_groups(ensemble: TreeEnsemble, parts: int) -> list[list[int]]:
    """The trees cut into at most ``parts`` groups of about equal internal nodes (products), for that many cores."""
    sizes = [int((tree.left >= 0).sum()) for tree in ensemble.trees]
    groups: list[list[int]] = [[] for _ in range(max(1, min(parts, len(sizes))))]
    loads = [0] * len(groups)
    for t in sorted(range(len(sizes)), key=lambda t: -sizes[t]):  # largest first, each to the lightest group
        g = loads.index(min(loads))
        groups[g].append(t)
        loads[g] += sizes[t]
    return [sorted(group) for group in groups if group]


def part_programs(
    ensemble: TreeEnsemble, leaf_values: list[np.ndarray], n_bits: int, encoding: BatchEncoding, parts: int, split: int = 0
) -> list[SlotProgram]:
    """One program per group of trees (:func:`tree_groups`); their outputs add up to :func:`tree_program`'s (at the
    same ``split``, so that none is deeper than the whole and all run at its parameters)."""
    return [
        tree_program(
            replace(ensemble, trees=tuple(ensemble.trees[t] for t in group)),
            [leaf_values[t] for t in group],
            n_bits,
            encoding,
            split,
        ).program
        for group in tree_groups(ensemble, parts)
    ]
