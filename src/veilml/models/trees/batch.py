"""A tree ensemble as a slot program (:mod:`veilml.runtime.batch.program`): the batched path's lowering.

One row per slot. The client encrypts each feature's quantized code ``q`` (``n_bits`` bits) as bits, in one of
two encodings (:class:`BatchEncoding`):

- ``thermometer``: ``[q >= k]`` for every code ``k = 1 .. 2**n_bits - 1``; every comparison of the model is
  then one of the encrypted bits, free.
- ``digits``: ``q = B h + l`` with ``B = 2**low_bits``, and the thermometer bits of each digit, ``[h >= a]`` and
  ``[l >= b]`` (``2**high_bits - 1 + 2**low_bits - 1`` bits: 14 instead of 63 at 6 bits). A comparison
  ``[q >= B a + b]`` is ``[h >= a + 1] + ([h >= a] - [h >= a + 1]) [l >= b]``: one product (none when ``b = 0``),
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
import enum
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from veilml.models.trees.ensemble import TreeEnsemble
from veilml.models.trees.lowering.leaf_values import right_code
from veilml.runtime.batch.program import Linear, ProgramBuilder, SlotProgram

__all__ = [
    "BatchEncoding",
    "BatchScorer",
    "TreeProgram",
    "LINK_BYTES_PER_S",
    "batch_seconds",
    "choose_encoding",
    "encode_codes",
    "matching_leaves",
    "tree_program",
]


class BatchEncoding(enum.StrEnum):
    """How the client encodes each feature's code as encrypted bits (see the module docstring)."""

    THERMOMETER = "thermometer"
    DIGITS = "digits"


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


def _split(n_bits: int) -> tuple[int, int]:
    """(high, low) bits of the digits encoding: the low digit takes the larger half."""
    low = (n_bits + 1) // 2
    return n_bits - low, low


def bits_per_feature(encoding: BatchEncoding, n_bits: int) -> int:
    if encoding is BatchEncoding.THERMOMETER:
        return 2**n_bits - 1
    high, low = _split(n_bits)
    return 2**high - 1 + 2**low - 1


def encode_codes(codes: np.ndarray, encoding: BatchEncoding, n_bits: int) -> np.ndarray:
    """The encrypted inputs' bits (n_features * bits_per_feature, n_rows) uint8 of codes (n_rows, n_features)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.size and (codes.min() < 0 or codes.max() >= 2**n_bits):
        raise ValueError(f"codes must be a 2-D array of integers in [0, {2**n_bits})")
    if encoding is BatchEncoding.THERMOMETER:
        levels = np.arange(1, 2**n_bits)
        bits = codes[:, :, None] >= levels[None, None, :]  # (rows, features, levels)
    else:
        high, low = _split(n_bits)
        high_digit, low_digit = codes >> low, codes & (2**low - 1)
        bits = np.concatenate(
            [
                high_digit[:, :, None] >= np.arange(1, 2**high)[None, None, :],
                low_digit[:, :, None] >= np.arange(1, 2**low)[None, None, :],
            ],
            axis=2,
        )
    return np.ascontiguousarray(bits.reshape(codes.shape[0], -1).T.astype(np.uint8))


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
        high, low = _split(self.n_bits)

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


#: per polynomial degree, measured costs on one core of this project's 2-core machine (seconds per ciphertext):
#: the client's encryption of one input, the server's relinearized product (the cost model of ``"auto"``)
_ENCRYPT_S = {8192: 0.004, 16384: 0.012, 32768: 0.04}
_PRODUCT_S = {8192: 0.02, 16384: 0.06, 32768: 0.25}
#: the link the cost model assumes between client and server (bytes per second: 1 Gbit/s)
LINK_BYTES_PER_S = 125e6


def upload_bytes(tp: TreeProgram) -> int:
    """Bytes one batch uploads: every input as a whole ciphertext (two polynomials over the data primes, 8 bytes a
    coefficient as SEAL saves them, before its compression of the unused high bits)."""
    from veilml.runtime.batch.seal_bfv import batch_params

    params = batch_params(tp.program.depth)
    return tp.program.n_inputs * 2 * params.poly_degree * (len(params.coeff_bits) - 1) * 8


def batch_seconds(tp: TreeProgram, rows: int, link_bytes_per_s: float = LINK_BYTES_PER_S) -> float:
    """Estimated seconds to score ``rows`` rows: per batch, the client's encryptions and the server's products on
    one core each (:data:`_ENCRYPT_S`, :data:`_PRODUCT_S`), and the upload over a link of ``link_bytes_per_s``."""
    from veilml.runtime.batch.seal_bfv import batch_params

    degree = batch_params(tp.program.depth).poly_degree
    batches = max(1, -(-rows // degree))
    compute = tp.program.n_inputs * _ENCRYPT_S[degree] + tp.program.n_products * _PRODUCT_S[degree]
    return batches * (compute + upload_bytes(tp) / link_bytes_per_s)


def choose_encoding(programs: dict[BatchEncoding, TreeProgram], rows: int) -> BatchEncoding:
    """The encoding that scores ``rows`` rows in the least estimated time, upload included (:func:`batch_seconds`)."""
    return min(programs, key=lambda encoding: batch_seconds(programs[encoding], rows))


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


class BatchScorer:
    """Scores whole tables of a fitted veilml tree estimator on the batched (leveled BFV) path, on this machine:
    the client here, the server's part here and in helper processes (``workers``).

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
        self._parts: dict[BatchEncoding, list[SlotProgram]] = {}
        self.bytes_up = self.bytes_down = 0

    def plan(self, rows: int) -> TreeProgram:
        """The program (and so the encoding and parameters) that scores ``rows`` rows the fastest."""
        return self.programs[choose_encoding(self.programs, rows)]

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
        from tqdm import tqdm

        from veilml.runtime.batch.seal_bfv import BatchClient, BatchServer, serve_batch

        X = self.estimator._fitted_input(X)
        codes = self.estimator.fhe_model_.codec.input_quantizer.quantize(X)
        self.tree_program = self.plan(len(codes))
        client = BatchClient(self.params)
        server = BatchServer(self.params, client.relin_keys, client.public_key)  # public keys only
        tp, slots = self.tree_program, self.params.slots
        program, programs = tp.program, self.parts(tp)
        found: list[np.ndarray] = []
        pending: collections.deque = collections.deque()
        starts = range(0, len(codes), slots)
        # several batches: each evaluated whole in a helper process while this one encrypts the next (a stream);
        # one batch: its tree groups evaluated at once, here and in helpers
        stream = len(starts) > 1 and self.workers > 1
        helpers = self.workers if stream else len(programs) - 1
        show = None if self.progress is None else not self.progress  # None: shown on a terminal only

        def receive(rows: int, outputs: list[bytes]) -> None:
            self.bytes_down += sum(len(c) for c in outputs)
            found.append(client.decrypt(outputs, rows, len(program.outputs)).T)

        with contextlib.ExitStack() as stack:
            pool = None
            if helpers > 0:  # processes of their own: SEAL holds the GIL
                context = multiprocessing.get_context("spawn")
                pool = stack.enter_context(ProcessPoolExecutor(helpers, mp_context=context))
            # every input bit is encrypted and sent, read or not: the client learns nothing of the model's comparisons
            for start in tqdm(starts, desc="batched FHE", unit=f"batch of {slots}", disable=show):
                batch = codes[start : start + slots]
                inputs = client.encrypt(encode_codes(batch, self.encoding, tp.n_bits))
                self.bytes_up += sum(len(c) for c in inputs)
                if not stream:
                    receive(len(batch), server.evaluate_parts(programs, inputs, len(batch), pool))
                    continue
                pending.append((len(batch), pool.submit(serve_batch, server.keys, program, inputs, len(batch))))
                while len(pending) > helpers:
                    rows, future = pending.popleft()
                    receive(rows, future.result())
            while pending:
                rows, future = pending.popleft()
                receive(rows, future.result())
        scores = np.concatenate(found) if found else np.zeros((0, len(program.outputs)), np.int64)
        return scores @ self.combine

    def decision_scores(self, X: Any) -> np.ndarray:
        """Raw scores (n_rows, n_outputs), as the estimator's ``decision_scores(X, fhe="disable")``."""
        return self.estimator.fhe_model_.codec.scores(self.integers(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.estimator.fhe_model_.codec.finish(self.decision_scores(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.estimator.fhe_model_.codec.labels(self.decision_scores(X))
