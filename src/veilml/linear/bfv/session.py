"""The client's half of the ``bfv`` backend: public uniform polynomials per session, a fresh secret per row block.

The client derives every parameter and the block plan itself from the worker's public setup (:mod:`.params`,
:mod:`.planner`), exactly as the worker does (:mod:`.server`), so a worker cannot hand it weaker parameters
and a request never carries a plan the worker would refuse. The session draws one seed for its public uniform
polynomials a_j (:mod:`.prg`; sent with the parameters, never chosen by a worker). A request is encrypted in
one batch (:meth:`~.keys.ClientKey.encrypt`: a fresh secret per row block, kept until its result is
decrypted, then dropped) and a result decrypted in one (:meth:`~.keys.ClientKey.decrypt`). The second
polynomials of the results, ``sum_j a_j W_j``, are the same for every request of a matrix and block shape:
the first request of a shape asks for them (the session's hint, :mod:`.product`) and the session keeps them.
Sizes, formats and the request a result answers are checked before any decryption, never decrypted values.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from veilml.linear.base import ClientSession, MatrixSpec
from veilml.linear.bfv.encoding import HINT_LIMB_BITS
from veilml.linear.bfv.keys import ClientKey
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
from veilml.linear.bfv.planner import POLY_DEGREE, Plan, plan_product
from veilml.linear.bfv.prg import expand_uniform, random_seed
from veilml.linear.bfv.product import pack_values, unpack_values
from veilml.linear.bfv.wire import BFVSetup, pack_message, read_fields
from veilml.linear.layers import check_setup_shape

__all__ = ["HINT_MEMORY", "MAX_PENDING", "BFVSession"]

#: requests whose secrets a session keeps while their results are outstanding; the oldest are dropped beyond it
MAX_PENDING = 256
#: bytes of hints a session keeps as float64, ready for decryption; further ones are kept bit-packed, as they
#: arrived, and unpacked for each decryption (a Llama-3.2-1B-sized model's hints take about 7 GB packed)
HINT_MEMORY = 2 << 30


@dataclass(frozen=True)
class _Hint:
    """The second polynomials (C, N) of a matrix's results for one block plan: as float64, or bit-packed."""

    count: int
    bits: int
    dense: np.ndarray | None
    packed: bytes | None

    def values(self) -> np.ndarray:
        if self.dense is not None:
            return self.dense
        dtype = np.float64 if self.bits <= HINT_LIMB_BITS else np.int64
        return unpack_values(self.packed, self.count * POLY_DEGREE, self.bits, dtype).reshape(self.count, POLY_DEGREE)


@dataclass
class _Matrix:
    spec: MatrixSpec
    setup: BFVSetup
    key: ClientKey
    hints: dict[Plan, _Hint] = field(default_factory=dict)  # per block plan: the results' second polynomials


@dataclass(frozen=True)
class _Pending:
    name: str
    n: int
    plan: Plan
    secrets: np.ndarray  # (R, N): one fresh secret per row block of the request
    hint: bool


class BFVSession(ClientSession):
    """Public uniform polynomials per session, fresh secrets per row block, in memory only; sends public parameters."""

    keys_shared_across_matrices = False

    def __init__(self) -> None:
        super().__init__()
        self._seed = random_seed()
        self._uniform = np.empty((len(MODULI), POLY_DEGREE, 0), np.int32)
        self._keys: dict[BFVParams, ClientKey] = {}
        self._matrices: dict[str, _Matrix] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._dense_bytes = 0  # hints kept as float64 (at most HINT_MEMORY)
        self._lock = threading.Lock()

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        parsed = BFVSetup.from_bytes(setup, SETUP_FORMAT)
        check_setup_shape("bfv", name, spec, parsed.rows, parsed.cols, parsed.input_bits)
        params = client_params(spec.rows, spec.input_bits, max(parsed.w_max, 1))
        plan_product(params, RNS_COSTS, 1, spec.rows, spec.cols, max(parsed.w_max, 1), 0)  # ValueError if no block shape fits
        if params not in self._keys:
            self._keys[params] = ClientKey(params)
        self._matrices[name] = _Matrix(spec, parsed, self._keys[params])
        self.specs[name] = spec
        return dataclasses.replace(params, seed=self._seed).to_bytes()

    def _matrix(self, name: str) -> _Matrix:
        self.spec(name)
        return self._matrices[name]

    def _plan(self, matrix: _Matrix, n: int) -> Plan:
        setup = matrix.setup
        return plan_product(matrix.key.params, RNS_COSTS, n, setup.rows, setup.cols, max(setup.w_max, 1), setup.cached_rows)

    def _uniform_polys(self, j: int) -> np.ndarray:
        """The session's a_0 .. a_{j-1} in the transform domain (primes, N, >= j), expanded once."""
        with self._lock:
            if self._uniform.shape[2] < j:
                self._uniform = expand_uniform(self._seed, 0, j)
            return self._uniform

    def _keep_hint(self, data: bytes, count: int, bits: int) -> _Hint:
        """A hint as float64 (exact below 2**41) while the session's budget lasts, else as the packed bytes received."""
        dense_bytes = count * POLY_DEGREE * 8
        with self._lock:
            dense = bits <= HINT_LIMB_BITS and self._dense_bytes + dense_bytes <= HINT_MEMORY
            if dense:
                self._dense_bytes += dense_bytes
        if not dense:
            size = -(-count * POLY_DEGREE * bits // 8)
            if len(data) != size:
                raise ValueError(
                    f"expected {count} second polynomials of {bits}-bit coefficients ({size} bytes), got {len(data)} bytes"
                )
            return _Hint(count, bits, None, bytes(data))
        return _Hint(count, bits, unpack_values(data, count * POLY_DEGREE, bits, np.float64).reshape(count, POLY_DEGREE), None)

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        matrix = self._matrix(name)
        rows = matrix.spec.check_input(x_q)
        n = rows.shape[0]
        if n == 0:
            return pack_message(CIPHERTEXT_FORMAT, 0, None, [])
        plan = self._plan(matrix, n)
        r, j, _ = plan.counts(n, matrix.spec.rows, matrix.spec.cols)
        hint = plan not in matrix.hints
        first, secrets = matrix.key.encrypt(rows, (plan.n_t, plan.n_d, plan.n_m), (r, j), self._uniform_polys(j))
        request = os.urandom(16).hex()
        with self._lock:
            self._pending[request] = _Pending(name, n, plan, secrets, hint)
            while len(self._pending) > MAX_PENDING:  # results that never came: their secrets are dropped
                self._pending.popitem(last=False)
        return pack_message(CIPHERTEXT_FORMAT, n, plan, [pack_values(first, PRIME_BITS)], id=request, hint=hint)

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        matrix = self._matrix(name)
        spec, params = matrix.spec, matrix.key.params
        n, plan, frames, header = read_fields(result, RESULT_FORMAT)
        if n == 0 or plan is None:
            return np.zeros((0, spec.cols), np.int64)
        request = header.get("id")
        with self._lock:
            pending = self._pending.get(request) if isinstance(request, str) else None
        if pending is None or pending.name != name:
            raise ValueError(f"this result for {name!r} answers no request of this session awaiting one")
        if (n, plan) != (pending.n, pending.plan):
            raise ValueError(f"the result for {name!r} does not follow the block plan of the {pending.n} rows sent")
        if header.get("hint") is not pending.hint or len(frames) != 1 + pending.hint:
            raise ValueError(
                f"the result for {name!r} {'lacks' if pending.hint else 'carries'} the hint that was {'' if pending.hint else 'not '}asked for"
            )
        r, _, c = plan.counts(n, spec.rows, spec.cols)
        p = plan.n_t * plan.n_m
        bits = params.plain_bits + plan.shift
        values = unpack_values(frames[0], r * c * p, bits).reshape(r, c, p)
        if pending.hint:
            matrix.hints[plan] = self._keep_hint(frames[1], c, bits)
        shape = (plan.n_t, plan.n_d, plan.n_m)
        outputs = matrix.key.decrypt(matrix.hints[plan].values(), values, shape, bits, plan.shift, pending.secrets)
        with self._lock:  # decrypted: its secrets are never used again
            self._pending.pop(request, None)
        blocks = outputs.reshape(r, c, plan.n_t, plan.n_m).transpose(0, 2, 1, 3).reshape(r * plan.n_t, c * plan.n_m)
        return np.ascontiguousarray(blocks[:n, : spec.cols])
