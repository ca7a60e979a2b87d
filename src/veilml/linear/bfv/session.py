"""The client's half of the ``bfv`` backend: a fresh secret per session, every ciphertext of a request at once.

The client derives every parameter and the block plan itself from the worker's public setup (:mod:`.params`,
:mod:`.planner`), exactly as the worker does (:mod:`.server`), so a worker cannot hand it weaker parameters
and a request never carries a plan the worker would refuse. A request is encrypted in one batch
(:meth:`~.keys.ClientKey.encrypt`: one seed, the noise, two transforms per ciphertext and prime) and a result
decrypted in one (:meth:`~.keys.ClientKey.decrypt`); sizes and formats are checked before any decryption,
never the decrypted values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilml.linear.base import ClientSession, MatrixSpec
from veilml.linear.bfv.keys import ClientKey
from veilml.linear.bfv.params import (
    CIPHERTEXT_FORMAT,
    PRIME_BITS,
    RESULT_FORMAT,
    RNS_COSTS,
    SETUP_FORMAT,
    BFVParams,
    client_params,
)
from veilml.linear.bfv.planner import POLY_DEGREE, Plan, plan_product
from veilml.linear.bfv.product import pack_values, unpack_values
from veilml.linear.bfv.wire import BFVSetup, pack_message, read_message
from veilml.linear.layers import check_setup_shape

__all__ = ["BFVSession"]


@dataclass
class _Matrix:
    spec: MatrixSpec
    setup: BFVSetup
    key: ClientKey


class BFVSession(ClientSession):
    """Fresh secret keys per session (one per plaintext modulus), in memory only; sends public parameters."""

    keys_shared_across_matrices = False

    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[BFVParams, ClientKey] = {}
        self._matrices: dict[str, _Matrix] = {}

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        parsed = BFVSetup.from_bytes(setup, SETUP_FORMAT)
        check_setup_shape("bfv", name, spec, parsed.rows, parsed.cols, parsed.input_bits)
        params = client_params(spec.rows, spec.input_bits, max(parsed.w_max, 1))
        plan_product(params, RNS_COSTS, 1, spec.rows, spec.cols, max(parsed.w_max, 1), 0)  # ValueError if no block shape fits
        if params not in self._keys:
            self._keys[params] = ClientKey(params)
        self._matrices[name] = _Matrix(spec, parsed, self._keys[params])
        self.specs[name] = spec
        return params.to_bytes()

    def _matrix(self, name: str) -> _Matrix:
        self.spec(name)
        return self._matrices[name]

    def _plan(self, matrix: _Matrix, n: int) -> Plan:
        setup = matrix.setup
        return plan_product(matrix.key.params, RNS_COSTS, n, setup.rows, setup.cols, max(setup.w_max, 1), setup.cached_rows)

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        matrix = self._matrix(name)
        rows = matrix.spec.check_input(x_q)
        n = rows.shape[0]
        if n == 0:
            return pack_message(CIPHERTEXT_FORMAT, 0, None, [])
        plan = self._plan(matrix, n)
        r, j, _ = plan.counts(n, matrix.spec.rows, matrix.spec.cols)
        first, seed = matrix.key.encrypt(rows, (plan.n_t, plan.n_d, plan.n_m), (r, j))
        return pack_message(CIPHERTEXT_FORMAT, n, plan, [pack_values(first, PRIME_BITS), seed])

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        matrix = self._matrix(name)
        spec, params = matrix.spec, matrix.key.params
        n, plan, frames = read_message(result, RESULT_FORMAT)
        if n == 0 or plan is None:
            return np.zeros((0, spec.cols), np.int64)
        if plan != self._plan(matrix, n) or len(frames) != 1:
            raise ValueError(f"the result for {name!r} does not follow the block plan of its {n} rows")
        r, _, c = plan.counts(n, spec.rows, spec.cols)
        p = plan.n_t * plan.n_m
        bits = params.plain_bits + plan.shift
        values = unpack_values(frames[0], r * c * (POLY_DEGREE + p), bits).reshape(r * c, POLY_DEGREE + p)
        outputs = matrix.key.decrypt(
            values[:, :POLY_DEGREE], values[:, POLY_DEGREE:], (plan.n_t, plan.n_d, plan.n_m), bits, plan.shift
        )
        blocks = outputs.reshape(r, c, plan.n_t, plan.n_m).transpose(0, 2, 1, 3).reshape(r * plan.n_t, c * plan.n_m)
        return np.ascontiguousarray(blocks[:n, : spec.cols])
