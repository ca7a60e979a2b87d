"""The ``bfv`` backend: exact encrypted ``x @ M`` by RLWE coefficient encoding, in RNS form with veilml's own kernels.

The client encrypts every row block of a request at once (:class:`~.keys.ClientKey`: a fresh secret per row
block, the session's public uniform polynomials a_j) and sends the first polynomials' residues mod p1 and
p2; the worker multiplies them by the clear matrix as one matrix product (float64, exact), switches the
output coefficients to a small modulus and sends back only those (:mod:`.product`). The second polynomials
of the results (the session's hint, ``sum_j a_j M_j``) are the same for every request of a matrix and block
shape: the worker computes them once per session and shape, when asked, with transforms. The worker
receives public parameters (:class:`~.params.BFVParams`, with the seed of the a_j), never a key: there is
no evaluation key. Security of sharing the a_j: ``docs/security.md``. Exactness and failure probability:
:mod:`.planner`; bounded work (parameters and plan derived by the worker, result size refused above a
limit, units of column tiles with the deadline checked between them): :mod:`.server`.

The arithmetic runs on a kernel set (:func:`~.ops.kernel_set`): numba and numpy on the CPU (the default), or
torch on any device (``device="cuda"``; ``veilml worker --device cuda``). Both give the same bits.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, Work
from veilml.linear.bfv.params import (
    CIPHERTEXT_FORMAT,
    MODULI,
    PRIME_BITS,
    RESULT_FORMAT,
    RNS_COSTS,
    SETUP_FORMAT,
    BFVParams,
    client_params,
)
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.prg import expand_uniform
from veilml.linear.bfv.product import RNSProduct, check_residues, result_size, unpack_values
from veilml.linear.bfv.server import COST_BOUND, DEFAULT_MAX_RESULT_BYTES, BlockServer, Checked
from veilml.linear.bfv.session import BFVSession
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT

__all__ = ["COST_BOUND", "DEFAULT_MAX_RESULT_BYTES", "MAX_REQUEST_ID", "BFVBackend", "BFVServer"]

MAX_REQUEST_ID = 64  # characters of a request id (the client sends 32 hexadecimal digits)


class BFVServer(BlockServer):
    """Holds the clear matrix; never a key, and no encoded weights (the hint's are transformed when asked for).

    Args (besides :class:`~.server.BlockServer`'s): ``ops``, the kernel set its products run on
    (:func:`~.ops.kernel_set`; default numba on the CPU).
    """

    costs = RNS_COSTS
    setup_format, ciphertext_format, result_format = SETUP_FORMAT, CIPHERTEXT_FORMAT, RESULT_FORMAT

    def __init__(self, matrix: np.ndarray, input_bits: int, *, ops: Any = None, **limits: Any) -> None:
        super().__init__(matrix, input_bits, None, **limits)  # no weights kept encoded: the products read the matrix
        if ops is None:
            from veilml.linear.bfv.ops import kernel_set

            ops = kernel_set()
        self.ops = ops

    @staticmethod
    def client_params(d: int, input_bits: int, w_max: int) -> BFVParams:
        return client_params(d, input_bits, w_max)

    @staticmethod
    def parse_params(data: bytes) -> BFVParams:
        return BFVParams.from_bytes(data)

    @staticmethod
    def held(column: Any) -> int:
        """Bytes of one shape's transformed weight blocks (primes, T, J, C) int32, wherever they are."""
        return int(column.nbytes)

    def _encode(self, plan: Plan) -> Any:
        """The transformed weight blocks of ``plan``'s shape, for a hint (:mod:`.product`)."""
        return self.ops.matrix_weights(self.matrix, plan.n_d, plan.n_m, plan.n_t)

    def result_size(self, params: BFVParams, plan: Plan, n: int, header: dict[str, object]) -> tuple[int, int]:
        """Per result ciphertext its output coefficients, and C whole second polynomials when the request asks for
        the hint (:mod:`.product`)."""
        hint = header.get("hint")
        if type(hint) is not bool:
            raise ValueError("a bfv request says whether it asks for the session's hint: true or false")
        d, m = self.matrix.shape
        counts = plan.counts(n, d, m)
        r, _, c = counts
        held = (r * c * plan.n_t * plan.n_m + (c * POLY_DEGREE if hint else 0)) * 8
        return held, result_size(plan, counts, params.plain_bits + plan.shift, hint)

    def _work(self, checked: Checked, deadline: float | None) -> Work:
        params, plan, frames, (r, j, c) = checked.params, checked.plan, checked.frames, checked.counts
        request = checked.header.get("id")
        if not isinstance(request, str) or not 1 <= len(request) <= MAX_REQUEST_ID or not request.isalnum():
            raise ValueError(f"a bfv request carries an id of 1 to {MAX_REQUEST_ID} letters and digits")
        if len(frames) != 1:
            raise ValueError(f"expected the first polynomials of {r * j} ciphertexts (one data frame)")
        first = unpack_values(frames[0], r * j * len(MODULI) * POLY_DEGREE, PRIME_BITS, np.int32)  # ValueError: wrong size
        first = first.reshape(r, j, len(MODULI), POLY_DEGREE)
        check_residues(first)
        uniform = expand_uniform(params.seed, 0, j) if checked.header["hint"] else None
        bits = params.plain_bits + plan.shift
        hint_weights = partial(self._encode, plan)
        product = RNSProduct(
            self.ops,
            plan,
            checked.n,
            (r, j, c),
            first,
            self.matrix,
            self.w_max,
            uniform,
            hint_weights,
            checked.size,
            bits,
            request,
        )
        return Work(tuple(product.units()), product.finish)


class BFVBackend(LinearBackend):
    """Exact encrypted products by coefficient encoding in RNS form, on numba or torch kernels (see the module docstring).

    The worker keeps no encoded weights: its products read the clear matrix (:mod:`.product`).

    Args:
        run_timeout: seconds one request may compute (checked between units of work) when the caller gives
            no deadline; then :class:`~veilml.linear.base.WorkTimeout`.
        max_result_bytes: the largest result one request may produce; larger requests are refused unrun.
        device: where the worker computes: ``"cpu"`` (numba kernels) or a torch device such as ``"cuda"``
            (torch kernels). The client always encrypts and decrypts on the CPU.
        kernels: ``"numba"`` or ``"torch"``; None picks numba on the CPU and torch elsewhere.
    """

    name = "bfv"

    def __init__(
        self,
        *,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        device: str = "cpu",
        kernels: str | None = None,
    ) -> None:
        from veilml.linear.bfv.ops import kernel_set

        self.run_timeout, self.max_result_bytes = run_timeout, max_result_bytes
        self.device, self.kernels = device, kernels or ("numba" if device == "cpu" else "torch")
        self.ops = kernel_set(self.kernels, device)

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return BFVServer(matrix, input_bits, ops=self.ops, run_timeout=self.run_timeout, max_result_bytes=self.max_result_bytes)

    def session(self) -> ClientSession:
        return BFVSession()
