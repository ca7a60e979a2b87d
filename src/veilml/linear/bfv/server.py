"""The worker's half shared by both ``bfv`` engines: parameters and plans derived, never taken, and bounded work.

Bounded work. Everything a request's cost depends on is derived by the worker, never taken from the
client: the parameters must be those veilml's client derives for the matrix (each engine's
``client_params``) and the block plan the one :func:`~.planner.plan_product` gives for the announced row
count. So a request of n rows costs the worker what the honest request of n rows costs, with constant
:data:`COST_BOUND` = 1: the same ciphertext loads, products, result ciphertexts and result bytes, whatever
the ciphertexts hold (with ``bfv``, a request may ask for the session's hint, which an honest client does once
per matrix and shape: one more unit, the second polynomials' products). The only cost a ``bfv-seal``
request can add to that is encoding a block shape's weights the first time it is used (once per server and
shape, kept within the weight budget, never again: :mod:`.cache`). The result's size follows from the plan
(:meth:`BlockServer.result_size`) and is refused above ``max_result_bytes``; each engine cuts the work into
units (row blocks, or column tiles and the hint), and :meth:`BlockServer.run` checks the deadline between
units.
"""

from __future__ import annotations

import abc
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from veilml.linear.base import LinearServer, Work, run_work
from veilml.linear.bfv.cache import EncodedColumns, WeightBudget, WeightCache
from veilml.linear.bfv.planner import (
    POLY_DEGREE,
    CostModel,
    Plan,
    cache_bytes,
    cached_shape,
    plain_bits_for,
    plan_product,
    result_bytes,
)
from veilml.linear.bfv.wire import BFVSetup, pack_message, read_fields, read_message
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT

__all__ = ["COST_BOUND", "DEFAULT_MAX_RESULT_BYTES", "BlockServer", "Checked"]

#: the largest result one request may produce, as the worker holds it (8 bytes per switched coefficient; the
#: bytes sent back are (plain_bits + shift) / 64 of it); honest 4096-row requests of SmolLM2's layers hold < 250 MB
DEFAULT_MAX_RESULT_BYTES = 1 << 30
#: a request of n rows costs at most this times the honest request of n rows (see the module docstring),
#: plus the one-time encoding of a block shape's weights
COST_BOUND = 1


class Checked:
    """A request whose parameters, plan and result size are the worker's own: what an engine's work starts from."""

    def __init__(
        self,
        params: Any,
        n: int,
        plan: Plan,
        frames: list[bytes],
        counts: tuple[int, int, int],
        size: int,
        header: dict[str, object],
    ) -> None:
        self.params, self.n, self.plan, self.frames, self.counts, self.size = params, n, plan, frames, counts, size
        self.header = header  # the request's header, for the engine's own fields


class BlockServer(LinearServer):
    """Holds the clear matrix (and, within the budget, its encoding); never a key. Each engine subclasses it.

    Args:
        budget: the backend's weight budget (None: keep no weights encoded).
        run_timeout: seconds :meth:`run` may compute when not given a deadline.
        max_result_bytes: largest result of one request as the worker holds it (8 bytes per coefficient; larger
            ones are refused before any work); what is sent back is exactly :func:`~.planner.result_bytes`.
    """

    #: the engine's costs, formats and parameters (set by each engine's subclass)
    costs: ClassVar[CostModel]
    setup_format: ClassVar[str]
    ciphertext_format: ClassVar[str]
    result_format: ClassVar[str]

    def __init__(
        self,
        matrix: np.ndarray,
        input_bits: int,
        budget: WeightBudget | None = None,
        *,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        super().__init__(matrix, input_bits)
        if not isinstance(input_bits, (int, np.integer)) or isinstance(input_bits, bool) or not 1 <= input_bits <= 16:
            raise ValueError(f"input_bits must be an integer in [1, 16], got {input_bits!r}")
        if not run_timeout > 0 or max_result_bytes <= 0:
            raise ValueError("run_timeout and max_result_bytes must be positive")
        self.w_max = int(np.abs(self.matrix).max(initial=0))
        if self.w_max < 2**15:  # the same integers in 2 bytes instead of 8 (a SmolLM2-sized worker)
            self.matrix = self.matrix.astype(np.int16)
        self.run_timeout, self.max_result_bytes = float(run_timeout), int(max_result_bytes)
        self._budget = budget
        self._expected: Any = None
        self._sizes: dict[int, int] = {}
        self._cached_rows: int | None = None if budget is not None else 0
        self._cache = WeightCache(0, self.held)
        self._transient: weakref.WeakValueDictionary[tuple[int, int, int], EncodedColumns] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        if budget is not None:
            budget.announce(self.cache_size)

    @staticmethod
    @abc.abstractmethod
    def client_params(d: int, input_bits: int, w_max: int) -> Any:
        """The parameters veilml's client of this engine derives for a (d, m) matrix (ValueError if none)."""

    @staticmethod
    @abc.abstractmethod
    def parse_params(data: bytes) -> Any:
        """The engine's parameters from a client's message (ValueError on anything malformed)."""

    @staticmethod
    @abc.abstractmethod
    def held(column: Any) -> int:
        """Bytes one encoded column block holds in the weight cache."""

    @abc.abstractmethod
    def _work(self, checked: Checked, deadline: float | None) -> Work:
        """The engine's units of work (one per row block) and finish for a checked request."""

    @property
    def expected_params(self) -> Any:
        """The parameters veilml's client derives for this matrix: the only ones this server accepts."""
        if self._expected is None:
            try:
                self._expected = self.client_params(self.spec.rows, self.spec.input_bits, max(self.w_max, 1))
            except ValueError as error:
                self._expected = error
        if isinstance(self._expected, ValueError):
            raise ValueError(f"no bfv parameters serve this matrix: {self._expected}")
        return self._expected

    def cache_size(self, cached_rows: int) -> int:
        """Bytes of this matrix's weights kept encoded for ``cached_rows`` (0 if the matrix cannot be served)."""
        if cached_rows not in self._sizes:
            try:
                params, (d, m) = self.expected_params, self.matrix.shape
                self._sizes[cached_rows] = cache_bytes(params, self.costs, d, m, max(self.w_max, 1), cached_rows)
            except ValueError:
                self._sizes[cached_rows] = 0
        return self._sizes[cached_rows]

    @property
    def cached_rows(self) -> int:
        """Plans of at most this many rows per block use weights kept encoded (decided at the first setup)."""
        with self._lock:
            if self._cached_rows is None:
                self._cached_rows = self._budget.reserve(self.cache_size)  # type: ignore[union-attr]
                self._cache = WeightCache(self.cache_size(self._cached_rows) if self._cached_rows else 0, self.held)
            return self._cached_rows

    @property
    def weight_cache(self) -> WeightCache:
        """The weights this server keeps encoded, with its bookkeeping (``held`` <= ``limit``)."""
        self.cached_rows  # noqa: B018 - decides the cache's size on first use
        return self._cache

    def setup(self) -> bytes:
        rows, cols = self.matrix.shape
        return BFVSetup(rows, cols, self.spec.input_bits, self.w_max, self.cached_rows).to_bytes(self.setup_format)

    def params(self, evaluation_keys: bytes) -> Any:
        """The client's public parameters, if they are exactly those veilml's client derives for this matrix (the
        client's own object: equal to the derived one, with the public data an engine does not compare)."""
        params = self.parse_params(evaluation_keys)
        need = plain_bits_for(self.spec.rows, self.spec.input_bits, self.w_max)
        if params.plain_bits < need:
            raise ValueError(f"a {params.plain_bits}-bit plaintext modulus is too small for this matrix (it needs {need} bits)")
        expected = self.expected_params
        if params != expected:
            primes = list(getattr(expected, "moduli", [expected.coeff_modulus]))
            raise ValueError(
                f"these bfv parameters (coefficient modulus {params.coeff_modulus}, a {params.plain_bits}-bit plaintext "
                f"modulus) are not this worker's for this matrix (the prime moduli {primes}, {expected.plain_bits} "
                "bits); use veilml's client, which derives them from the worker's setup"
            )
        return params

    def check_keys(self, evaluation_keys: bytes) -> None:
        self.params(evaluation_keys)

    def request_rows(self, ciphertext: bytes) -> int:
        return read_message(ciphertext, self.ciphertext_format)[0]

    def plan(self, params: Any, n: int) -> Plan:
        """The block plan of a request of ``n`` rows: the one veilml's client computes from the setup."""
        d, m = self.matrix.shape
        return plan_product(params, self.costs, n, d, m, max(self.w_max, 1), self.cached_rows)

    def is_cached_shape(self, params: Any, plan: Plan) -> bool:
        """Whether ``plan``'s weights belong in the cache (a cached shape), not to one request."""
        d, m = self.matrix.shape
        return plan.n_t <= self.cached_rows and plan == cached_shape(params, self.costs, d, m, max(self.w_max, 1), plan.n_t)

    def weights(self, params: Any, plan: Plan, columns: int, encode: Callable[[int], Any]) -> EncodedColumns:
        """The weights of ``plan``'s shape: kept in the cache for a cached shape, else shared by the requests using them."""
        shape = (plan.n_t, plan.n_d, plan.n_m)
        if self.is_cached_shape(params, plan):
            return self._cache.columns(shape, columns, encode)
        with self._lock:  # encoded for this request, shared with concurrent ones of the same shape, freed after
            found = self._transient.get(shape)
            if found is None:
                found = self._transient[shape] = EncodedColumns(columns, encode, lambda column: True)
            return found

    def work(self, ciphertext: bytes, evaluation_keys: bytes) -> Work:
        """The request validated (ValueError before any heavy work) and cut into one unit per row block.

        The units run in any order (or at once, from several threads); ``finish``, after all of them, packs the
        result. Refused: parameters or a plan other than veilml's client's, sizes that do not match the plan,
        coefficients not below the modulus, and a result over ``max_result_bytes``.
        """
        return self._start(ciphertext, evaluation_keys, None)

    def run(self, ciphertext: bytes, evaluation_keys: bytes, deadline: float | None = None) -> bytes:
        """:meth:`work`, every unit in order and the finish; :class:`~..base.WorkTimeout` past ``deadline``.

        ``deadline`` is a :func:`time.monotonic` value, checked between units; None means ``run_timeout``
        seconds from now.
        """
        if deadline is None:
            deadline = time.monotonic() + self.run_timeout
        return run_work(self._start(ciphertext, evaluation_keys, deadline), deadline)

    def result_size(self, params: Any, plan: Plan, n: int, header: dict[str, object]) -> tuple[int, int]:
        """(bytes the worker holds, bytes it sends) for the result of a request of ``n`` rows (ValueError when the
        request's header asks for something the engine does not give). Per result ciphertext: the whole second
        polynomial and the first one's output coefficients."""
        d, m = self.matrix.shape
        r, _, c = plan.counts(n, d, m)
        return r * c * (POLY_DEGREE + plan.n_t * plan.n_m) * 8, result_bytes(params, plan, n, d, m)

    def _start(self, ciphertext: bytes, evaluation_keys: bytes, deadline: float | None) -> Work:
        params = self.params(evaluation_keys)
        n, plan, frames, header = read_fields(ciphertext, self.ciphertext_format)
        if n == 0 or plan is None:
            empty = pack_message(self.result_format, 0, None, [])
            return Work((), lambda: empty)
        expected = self.plan(params, n)
        if plan != expected:
            raise ValueError(
                f"the block plan {plan} is not this worker's plan for {n} rows ({expected}); use veilml's client, "
                "which derives the same plan from the worker's setup"
            )
        d, m = self.matrix.shape
        r, j, c = plan.counts(n, d, m)
        held, size = self.result_size(params, plan, n, header)
        if held > self.max_result_bytes:
            raise ValueError(
                f"the result of {n} rows would take {held} bytes, over this worker's limit of {self.max_result_bytes}; "
                "send fewer rows per request"
            )
        return self._work(Checked(params, n, plan, frames, (r, j, c), size, header), deadline)
