"""The batched path (leveled BFV, one row per slot) for the tree estimators: when ``predict(fhe="execute")`` takes
it (:func:`use_batch`), the server's half of a fitted estimator (:func:`batch_server`: what a bundle's
``server/batch.json`` holds) and :class:`BatchScorer`, both halves on one machine. The lowering of an ensemble
to a slot program is :mod:`.batch_lowering`."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from veilml.models.trees.batch_lowering import TreeProgram, best_tree_program, part_programs, tree_groups, tree_program
from veilml.runtime.batch.encoding import BatchEncoding, encode_codes
from veilml.runtime.batch.halves import BatchModelClient, BatchModelServer
from veilml.runtime.batch.plan import (
    BATCH_MIN_ROWS,
    BATCH_MODULES,
    FHE_PATHS,
    LINK_BYTES_PER_S,
    batch_available,
    batch_seconds,
    choose_encoding,
    require_batch,
    upload_bytes,
)
from veilml.runtime.batch.program import SlotProgram

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
    "best_tree_program",
    "encode_codes",
    "matching_leaves",
    "part_programs",
    "tree_groups",
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
        if fhe_path == "batch":
            require_batch()
        return fhe_path == "batch"
    if rows >= BATCH_MIN_ROWS:
        if batch_available():
            return True
        if estimator.fhe_model_.compiled is not None:  # the TFHE path, slower on a table: say how to get the other
            warnings.warn(
                f"{rows} rows go through the TFHE path, one at a time: the batched path, much faster on tables, needs "
                f"{', '.join(BATCH_MODULES)} (pip install 'veilml[bfv]')",
                stacklevel=3,
            )
            return False
        require_batch()
    if estimator.fhe_model_.compiled is None:
        raise NotCompiledError(
            f"{rows} rows go through the TFHE path (the batched path takes tables of {BATCH_MIN_ROWS} rows or more), "
            "which needs a compiled model: call 'compile(X)' with representative data first, or pass fhe_path='batch' "
            "(no compile needed)"
        )
    return False


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
    return _programs_and_server(estimator, matching_leaves(estimator), encodings)[1]


def _programs_and_server(
    estimator: Any, leaves: Any, encodings: Any
) -> tuple[dict[BatchEncoding, TreeProgram], BatchModelServer]:
    """Each encoding's tree program at its cheapest split, and the server's half that holds them."""
    ensemble, n_bits = estimator.ensemble_, estimator.n_bits_
    programs = {BatchEncoding(e): best_tree_program(ensemble, leaves.values, n_bits, e) for e in encodings}
    _, _, combine = leaves.output_steps(ensemble, np.eye(len(leaves.outputs), dtype=np.int64))
    server = BatchModelServer({e: tp.program for e, tp in programs.items()}, n_bits, ensemble.n_features, combine)
    return programs, server


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
        wanted = list(BatchEncoding) if encoding == "auto" else [BatchEncoding(encoding)]
        self.programs, self.server = _programs_and_server(estimator, self.leaves, wanted)
        self.tree_program = self.programs[wanted[0]]
        self.combine = self.server.description.combine
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
                else part_programs(self.estimator.ensemble_, self.leaves.values, tp.n_bits, tp.encoding, self.workers, tp.split)
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
