"""A tree ensemble as a slot program (:mod:`veilml.runtime.batch.program`): the batched path's lowering.

One row per slot. The client encrypts each feature's quantized code ``q`` (``n_bits`` bits) as bits, in one of
two encodings (:mod:`veilml.runtime.batch.encoding`): ``thermometer`` (``[q >= k]`` for every code ``k``: every
comparison of the model is one of the encrypted bits, free) and ``digits`` (``q = B h + l``, the thermometer
bits of each digit). In digits, a comparison ``[q >= B a + b]`` is ``[h >= a + 1] + ([h >= a] - [h >= a + 1]) [l >= b]``: one product (none when ``b = 0``),
  one more level of depth.

Whatever the encoding, every bit is encrypted, so the client learns nothing of which comparisons the model
makes. Each tree is then a multiplexer, bottom up: a node's value is ``g_left + c (g_right - g_left)`` with
``c = [q_f >= k]`` (its test sends a row right), a leaf's is its quantized value, so a node whose children are
both leaves costs no product; with more than two outputs, each tree's leaves get indicators top down
instead (``ind_right = ind c``, ``ind_left = ind - ind_right``: one product per internal node below the root,
whatever the number of outputs) and the scores are clear combinations of them. The trees' scores are summed
in the ciphertext. The leaf values are the same quantized integers the TFHE path sums, so the decrypted
sums decode exactly as its ``disable`` mode's.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import right_code
from veilml.runtime.batch.encoding import BatchEncoding, bits_per_feature, encode_codes, split_bits
from veilml.runtime.batch.halves import BatchModelClient, BatchModelServer
from veilml.runtime.batch.plan import (
    BATCH_MIN_ROWS,
    FHE_PATHS,
    LINK_BYTES_PER_S,
    batch_seconds,
    choose_encoding,
    upload_bytes,
)
from veilml.runtime.batch.program import Linear, ProgramBuilder, SlotProgram

__all__ = [
    "BATCH_MIN_ROWS",
    "BatchEncoding",
    "BatchScorer",
    "FHE_PATHS",
    "TreeProgram",
    "LINK_BYTES_PER_S",
    "batch_seconds",
    "batch_server",
    "choose_encoding",
    "encode_codes",
    "matching_leaves",
    "tree_program",
    "upload_bytes",
    "use_batch",
]


def use_batch(estimator: Any, rows: int, fhe: str, fhe_path: str) -> bool:
    """Whether ``estimator`` scores ``rows`` rows on the batched path: ``fhe_path="batch"``, or ``"auto"`` and
    ``fhe="execute"`` on at least :data:`BATCH_MIN_ROWS` rows. Fewer rows go through the TFHE path, which needs a
    compiled model: without one, the error names both ways out."""
    from veilml.runtime.model import NotCompiledError

    if fhe_path not in FHE_PATHS:
        raise ValueError(f"fhe_path must be one of {FHE_PATHS}, got {fhe_path!r}")
    if fhe != "execute":
        if fhe_path == "batch":
            raise ValueError(f"fhe_path='batch' computes encrypted: pass fhe='execute' with it (got fhe={fhe!r})")
        return False
    if fhe_path != "auto":
        return fhe_path == "batch"
    if rows >= BATCH_MIN_ROWS:
        return True
    if estimator.fhe_model_.compiled is None:
        raise NotCompiledError(
            f"{rows} rows go through the TFHE path (the batched path takes tables of {BATCH_MIN_ROWS} rows or more), "
            "which needs a compiled model: call 'compile(X)' with representative data first, or pass fhe_path='batch' "
            "(no compile needed)"
        )
    return False


@dataclass(frozen=True)
class TreeProgram:
    """The slot program of an ensemble and the encoding its inputs are in."""

    program: SlotProgram
    encoding: BatchEncoding
    n_bits: int
    n_features: int

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
            if n_outputs <= 2
            else _indicators(tree, codes, values, compare, builder)
        )
        totals = [total + score for total, score in zip(totals, scores)]
    return TreeProgram(builder.build(totals), encoding, n_bits, ensemble.n_features)


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
    ensemble: TreeEnsemble, leaf_values: list[np.ndarray], n_bits: int, encoding: BatchEncoding, parts: int
) -> list[SlotProgram]:
    """One program per group of trees (:func:`tree_groups`); their outputs add up to :func:`tree_program`'s."""
    return [
        tree_program(
            replace(ensemble, trees=tuple(ensemble.trees[t] for t in group)), [leaf_values[t] for t in group], n_bits, encoding
        ).program
        for group in tree_groups(ensemble, parts)
    ]


def matching_leaves(estimator: Any) -> Any:
    """The quantized leaves whose sums the estimator's codec decodes (those its TFHE circuit sums)."""
    from veilml.models.trees.lowering.tables import QuantizedLeaves

    codec, ensemble = estimator.fhe_model_.codec, estimator.ensemble_
    for leaf_bits, score_rule in ((None, True), (estimator.leaf_bits_, False), (getattr(estimator, "leaf_bits", None), False)):
        leaves = QuantizedLeaves.of(ensemble, estimator.n_bits_, leaf_bits, score_rule)
        quantizer, bias, _ = leaves.output_steps(ensemble, np.eye(len(leaves.outputs), dtype=np.int64))
        if quantizer.to_dict() == codec.output_quantizer.to_dict() and np.array_equal(bias, codec.output_bias):
            return leaves
    raise ValueError("this estimator's leaves are quantized in a way the batched path does not reproduce; refit it")


def batch_server(estimator: Any, encodings: Any = tuple(BatchEncoding)) -> BatchModelServer:
    """The server's half of the batched path for a fitted estimator: its tree programs in each of ``encodings``
    (what a bundle's ``server/batch.json`` holds) and their public description."""
    leaves = matching_leaves(estimator)
    ensemble, n_bits = estimator.ensemble_, estimator.n_bits_
    programs = {BatchEncoding(e): tree_program(ensemble, leaves.values, n_bits, e).program for e in encodings}
    _, _, combine = leaves.output_steps(ensemble, np.eye(len(leaves.outputs), dtype=np.int64))
    return BatchModelServer(programs, n_bits, ensemble.n_features, combine)


class BatchScorer:
    """Scores whole tables of a fitted veilml tree estimator on the batched (leveled BFV) path, on this machine:
    both halves here (:mod:`veilml.runtime.batch.halves`), the server's part also in helper processes (``workers``).

    One row per slot: a batch of up to 8,192 or 16,384 rows is one encryption of each input bit, one evaluation
    and one decryption. The results decode exactly as the estimator's ``fhe="disable"`` ones (the same quantized
    integers), so ``predict`` / ``predict_proba`` / ``decision_scores`` agree with it on every row.

    Args:
        estimator: a fitted veilml tree estimator (its quantizers and ensemble are used as they are).
        encoding: ``"thermometer"``, ``"digits"`` or ``"auto"`` (for each call, the faster for its number of rows
            by :func:`choose_encoding`: encryption, evaluation and upload time).
        progress: a progress bar over batches (tqdm; None: only on a terminal).
        workers: processes the server's part runs on (the trees cut into groups, one per process, their outputs
            summed encrypted); None: up to 2, as many as this machine has cores.
    """

    def __init__(
        self, estimator: Any, encoding: BatchEncoding | str = "auto", progress: bool | None = None, workers: int | None = None
    ) -> None:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(estimator)
        self.estimator, self.progress = estimator, progress
        self.workers = max(1, min(2, os.cpu_count() or 1) if workers is None else int(workers))
        self.leaves = matching_leaves(estimator)
        ensemble, n_bits = estimator.ensemble_, estimator.n_bits_
        wanted = list(BatchEncoding) if encoding == "auto" else [BatchEncoding(encoding)]
        self.programs = {e: tree_program(ensemble, self.leaves.values, n_bits, e) for e in wanted}
        self.tree_program = self.programs[wanted[0]]
        _, _, self.combine = self.leaves.output_steps(ensemble, np.eye(len(self.leaves.outputs), dtype=np.int64))
        self.server = BatchModelServer(
            {e: tp.program for e, tp in self.programs.items()}, n_bits, ensemble.n_features, self.combine
        )
        self.client = BatchModelClient(estimator.fhe_model_.codec, self.server.description)  # checks it as a client does
        self._parts: dict[BatchEncoding, list[SlotProgram]] = {}
        self.bytes_up = self.bytes_down = 0

    def plan(self, rows: int) -> TreeProgram:
        """The program (and so the encoding and parameters) that scores ``rows`` rows the fastest."""
        return self.programs[self.client.plan(rows).encoding]

    def parts(self, tp: TreeProgram) -> list[SlotProgram]:
        """``tp``'s program cut into one per server process (:func:`part_programs`), made once per encoding."""
        if tp.encoding not in self._parts:
            groups = len(tree_groups(self.estimator.ensemble_, self.workers))
            self._parts[tp.encoding] = (
                [tp.program]
                if groups == 1
                else part_programs(self.estimator.ensemble_, self.leaves.values, tp.n_bits, tp.encoding, self.workers)
            )
        return self._parts[tp.encoding]

    @property
    def encoding(self) -> BatchEncoding:
        """The encoding of the last call (or the first candidate before any)."""
        return self.tree_program.encoding

    @property
    def params(self) -> Any:
        from veilml.runtime.batch.seal_bfv import batch_params

        return batch_params(self.tree_program.program.depth)

    def integers(self, X: Any) -> np.ndarray:
        """The summed quantized scores (n_rows, outputs), computed encrypted batch by batch (fresh keys per call)."""
        return self.checked_integers(self.estimator._fitted_input(X))

    def checked_integers(self, X: np.ndarray) -> np.ndarray:
        """:meth:`integers` of rows the estimator has checked already (``_fitted_input``)."""
        self.tree_program = self.plan(len(X))
        batches = -(-len(X) // self.params.slots)
        scores = self.client.score(X, self._transport(self.tree_program, batches), encoding=self.encoding, progress=self.progress)
        session = self.client.last_session
        if session is not None:
            self.bytes_up, self.bytes_down = self.bytes_up + session.bytes_up, self.bytes_down + session.bytes_down
        return scores

    def _transport(self, tp: TreeProgram, batches: int) -> Any:
        """The server's half here: several batches each evaluated whole in a helper process while this one encrypts
        the next (a stream); one batch: its tree groups evaluated at once, here and in helpers."""
        from veilml.runtime.batch.seal_bfv import BatchServer, serve_batch

        programs, params = self.parts(tp), self.params
        stream = batches > 1 and self.workers > 1
        helpers = self.workers if stream else len(programs) - 1

        def transport(requests: Any) -> Any:
            with contextlib.ExitStack() as stack:
                pool = None
                if helpers > 0:  # processes of their own: SEAL holds the GIL
                    context = multiprocessing.get_context("spawn")
                    pool = stack.enter_context(ProcessPoolExecutor(helpers, mp_context=context))
                pending: collections.deque = collections.deque()
                for request in requests:
                    self.server.check(request)
                    keys = (params, request.relin_keys, request.public_key)  # public keys only
                    if not stream:
                        yield BatchServer(*keys).evaluate_parts(programs, request.inputs, request.rows, pool)
                        continue
                    pending.append(pool.submit(serve_batch, keys, tp.program, request.inputs, request.rows))
                    while len(pending) > helpers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()

        return transport

    def decision_scores(self, X: Any) -> np.ndarray:
        """Raw scores (n_rows, n_outputs), as the estimator's ``decision_scores(X, fhe="disable")``."""
        return self.estimator.fhe_model_.codec.scores(self.integers(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.estimator.fhe_model_.codec.finish(self.decision_scores(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.estimator.fhe_model_.codec.labels(self.decision_scores(X))
