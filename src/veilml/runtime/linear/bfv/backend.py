"""The ``bfv`` backend: exact encrypted ``x @ M`` by RLWE coefficient encoding with SEAL's BFV.

The client encrypts row blocks as polynomials (:mod:`.encoding`) with a fresh secret key per session and
parameter set (:class:`~.crypto.ClientKey`) and sends seeded ciphertexts; the worker multiplies them by
its weight blocks, encoded as plaintexts in NTT form, sums over the inner blocks in NTT form, switches
each result to a small modulus and sends back only the coefficients the client needs. The worker
receives public parameters (:class:`~.params.BFVParams`), never a key: there is no evaluation key.
Exactness and failure probability: :mod:`.params`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base import ClientSession, LinearBackend, LinearServer, MatrixSpec
from .crypto import ClientKey, SealContext, seal_context
from .encoding import encode_rows, encode_weights, output_positions, pack_bits, switch_modulus, unpack_bits
from .params import (
    MAX_CACHED_ROWS,
    POLY_DEGREE,
    BFVParams,
    Plan,
    plain_bits_for,
    plan_product,
    result_shift,
    row_block_limit,
)
from .seal_bytes import PRNG_INFO_BYTES, PRNG_TYPES
from .wire import CIPHERTEXT_FORMAT, RESULT_FORMAT, BFVSetup, pack_message, read_message

__all__ = ["DEFAULT_WEIGHT_CACHE_BYTES", "BFVBackend", "BFVServer", "BFVSession", "WeightBudget"]

#: memory a worker may spend on weights kept encoded in NTT form (8 n_t bytes per weight and direction
#: for blocks of n_t rows); what does not fit is encoded again for every request
DEFAULT_WEIGHT_CACHE_BYTES = 2 << 30


@dataclass
class WeightBudget:
    """Bytes of encoded weights the servers of one backend may keep.

    Every server announces its weight count when it is made; at the first ``setup()`` (once the worker
    has made them all), each gets the same row block: the largest n_t <= MAX_CACHED_ROWS for which all
    the weights fit in NTT form (8 n_t bytes each). If not even n_t = 1 fits, the first matrices to ask
    take n_t = 1 while the budget lasts, the others are encoded per request.
    """

    limit: int
    weights: int = 0
    used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def announce(self, weights: int) -> None:
        with self._lock:
            self.weights += weights

    def rows_for(self, weights: int) -> int:
        with self._lock:
            rows = MAX_CACHED_ROWS
            while rows >= 1 and self.weights * rows * 8 > self.limit:
                rows //= 2
            if rows >= 1:
                return rows
            if self.used + weights * 8 > self.limit:
                return 0
            self.used += weights * 8
            return 1


class BFVServer(LinearServer):
    """Holds the clear matrix (and, within the budget, its NTT-form encoding); never a key."""

    def __init__(self, matrix: np.ndarray, input_bits: int, budget: WeightBudget | None = None) -> None:
        super().__init__(matrix, input_bits)
        if not isinstance(input_bits, (int, np.integer)) or isinstance(input_bits, bool) or not 1 <= input_bits <= 16:
            raise ValueError(f"input_bits must be an integer in [1, 16], got {input_bits!r}")
        self.w_max = int(np.abs(self.matrix).max(initial=0))
        if self.w_max < 2**15:  # the same integers in 2 bytes instead of 8 (a SmolLM2-sized worker)
            self.matrix = self.matrix.astype(np.int16)
        self._budget = budget
        if budget is not None:
            budget.announce(self.matrix.size)
        self._cached_rows: int | None = None if budget is not None else 0
        self._encoded: tuple[tuple[Any, ...], list[list[Any]]] | None = None
        self._lock = threading.Lock()

    @property
    def cached_rows(self) -> int:
        """Plans of at most this many rows per block use weights kept encoded (decided at the first setup)."""
        with self._lock:
            if self._cached_rows is None:
                self._cached_rows = self._budget.rows_for(self.matrix.size)
            return self._cached_rows

    def setup(self) -> bytes:
        rows, cols = self.matrix.shape
        return BFVSetup(rows, cols, self.spec.input_bits, self.w_max, self.cached_rows).to_bytes()

    def params(self, evaluation_keys: bytes) -> BFVParams:
        params = BFVParams.from_bytes(evaluation_keys)
        need = plain_bits_for(self.spec.rows, self.spec.input_bits, self.w_max)
        if params.plain_bits < need:
            raise ValueError(f"a {params.plain_bits}-bit plaintext modulus is too small for this matrix (it needs {need} bits)")
        return params

    def check_keys(self, evaluation_keys: bytes) -> None:
        seal_context(self.params(evaluation_keys))  # SEAL checks the parameters too

    def request_rows(self, ciphertext: bytes) -> int:
        return read_message(ciphertext, CIPHERTEXT_FORMAT)[0]

    def _weight_column(self, seal: SealContext, plan: Plan, c: int) -> list[Any]:
        """The J plaintexts (NTT form; None for an all-zero block) of column block ``c``."""
        block = self.matrix[:, c * plan.n_m : (c + 1) * plan.n_m]
        polys = encode_weights(block, plan.n_t, plan.n_d, plan.n_m, seal.params.plain_modulus)[:, 0]
        return [seal.plaintext(p, ntt=True) if p.any() else None for p in polys]

    def _weights(self, seal: SealContext, plan: Plan, c: int) -> list[Any]:
        if plan.n_t > self.cached_rows:
            return self._weight_column(seal, plan, c)
        key = (seal.params, plan.n_t, plan.n_d, plan.n_m)
        with self._lock:  # one encoding kept: that of the last parameters and shape
            if self._encoded is None or self._encoded[0] != key:
                columns = -(-self.spec.cols // plan.n_m)
                self._encoded = (key, [self._weight_column(seal, plan, i) for i in range(columns)])
            return self._encoded[1][c]

    def _read_request(self, ciphertext: bytes, params: BFVParams) -> tuple[int, Plan, np.ndarray, list[bytes]]:
        n, plan, frames = read_message(ciphertext, CIPHERTEXT_FORMAT)
        if n == 0:
            return 0, None, np.zeros(0, np.uint64), []
        if plan.n_t > row_block_limit(n):
            raise ValueError(
                f"a block of {plan.n_t} rows for {n} rows: blocks are at most the power of two at or above the row count"
            )
        r, j, _ = plan.counts(n, self.spec.rows, self.spec.cols)
        shift = result_shift(params, j, plan.n_d, plan.n_m, self.w_max)
        if shift is None or shift != plan.shift:
            raise ValueError(f"the plan's result shift {plan.shift} is not this matrix's ({shift}) for that block shape")
        if len(frames) != 2 or len(frames[1]) != r * j * PRNG_INFO_BYTES:
            raise ValueError(f"expected {r * j} seeded ciphertexts (two data frames of the right sizes)")
        first = unpack_bits(frames[0], r * j * POLY_DEGREE, params.coeff_modulus.bit_length())
        if first.size and first.max() >= params.coeff_modulus:
            raise ValueError("a ciphertext coefficient is not below the coefficient modulus")
        seeds = [frames[1][i : i + PRNG_INFO_BYTES] for i in range(0, len(frames[1]), PRNG_INFO_BYTES)]
        if any(seed[0] not in PRNG_TYPES for seed in seeds):
            raise ValueError("unknown PRNG type in a seed")
        return n, plan, first.reshape(r, j, POLY_DEGREE), seeds

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        params = self.params(evaluation_keys)
        seal = seal_context(params)
        n, plan, first, seeds = self._read_request(ciphertext, params)
        if n == 0:
            return pack_message(RESULT_FORMAT, 0, None, [])
        r, j, c = plan.counts(n, self.spec.rows, self.spec.cols)
        inputs = []
        for index, seed in enumerate(seeds):
            ct = seal.load_seeded(first[index // j, index % j], seed)
            seal.evaluator.transform_to_ntt_inplace(ct)
            inputs.append(ct)
        positions = output_positions(plan.n_t, plan.n_d, plan.n_m)
        bits = params.plain_bits + plan.shift
        out = np.zeros((r, c, POLY_DEGREE + positions.size), np.uint64)
        for col in range(c):
            weights = self._weights(seal, plan, col)
            for row in range(r):
                total = None
                for inner, plain in enumerate(weights):
                    if plain is None:  # an all-zero block adds nothing (and SEAL refuses a product with zero)
                        continue
                    term = sealapi_ciphertext()
                    seal.evaluator.multiply_plain(inputs[row * j + inner], plain, term)
                    if total is None:
                        total = term
                    else:
                        seal.evaluator.add_inplace(total, term)
                if total is None:  # the whole column block is zero: a trivial encryption of zeros
                    continue
                seal.evaluator.transform_from_ntt_inplace(total)
                polys = seal.polynomials(total)
                out[row, col, :POLY_DEGREE] = polys[1]
                out[row, col, POLY_DEGREE:] = polys[0][positions]
        return pack_message(RESULT_FORMAT, n, plan, [pack_bits(switch_modulus(out, params.coeff_modulus, bits), bits)])


def sealapi_ciphertext() -> Any:
    from tenseal import sealapi

    return sealapi.Ciphertext()


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
        parsed = BFVSetup.from_bytes(setup)
        if (parsed.rows, parsed.cols, parsed.input_bits) != (spec.rows, spec.cols, spec.input_bits):
            raise ValueError(
                f"the worker's bfv setup for {name!r} is for a ({parsed.rows}, {parsed.cols}) matrix with "
                f"{parsed.input_bits}-bit inputs, but the client expects {spec}"
            )
        from .params import client_params

        params = client_params(spec.rows, spec.input_bits, max(parsed.w_max, 1))
        plan_product(params, 1, spec.rows, spec.cols, max(parsed.w_max, 1), 0)  # ValueError if no block shape fits
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
        return plan_product(matrix.key.params, n, setup.rows, setup.cols, max(setup.w_max, 1), setup.cached_rows)

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        matrix = self._matrix(name)
        rows = matrix.spec.check_input(x_q)
        n = rows.shape[0]
        if n == 0:
            return pack_message(CIPHERTEXT_FORMAT, 0, None, [])
        plan = self._plan(matrix, n)
        polys = encode_rows(rows, plan.n_t, plan.n_d, plan.n_m)
        firsts, seeds = [], []
        for poly in polys.reshape(-1, POLY_DEGREE):
            first, seed = matrix.key.encrypt(poly)
            firsts.append(first)
            seeds.append(seed)
        bits = matrix.key.params.coeff_modulus.bit_length()
        return pack_message(CIPHERTEXT_FORMAT, n, plan, [pack_bits(np.stack(firsts), bits), b"".join(seeds)])

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        matrix = self._matrix(name)
        spec, params = matrix.spec, matrix.key.params
        n, plan, frames = read_message(result, RESULT_FORMAT)
        if n == 0:
            return np.zeros((0, spec.cols), np.int64)
        if plan != self._plan(matrix, n) or len(frames) != 1:
            raise ValueError(f"the result for {name!r} does not follow the block plan of its {n} rows")
        r, _, c = plan.counts(n, spec.rows, spec.cols)
        p = plan.n_t * plan.n_m
        bits = params.plain_bits + plan.shift
        values = unpack_bits(frames[0], r * c * (POLY_DEGREE + p), bits).reshape(r * c, POLY_DEGREE + p)
        outputs = matrix.key.decrypt(
            values[:, :POLY_DEGREE], values[:, POLY_DEGREE:], (plan.n_t, plan.n_d, plan.n_m), bits, plan.shift
        )
        blocks = outputs.reshape(r, c, plan.n_t, plan.n_m).transpose(0, 2, 1, 3).reshape(r * plan.n_t, c * plan.n_m)
        return np.ascontiguousarray(blocks[:n, : spec.cols])


class BFVBackend(LinearBackend):
    """Exact encrypted products with SEAL's BFV and coefficient encoding (see the module docstring).

    Args:
        weight_cache_bytes: memory the worker's servers may keep weights encoded in (NTT form, 8 n_t bytes
            per weight and direction for blocks of n_t rows, n_t <= 64); what does not fit is encoded for
            every request instead.
    """

    name = "bfv"

    def __init__(self, *, weight_cache_bytes: int = DEFAULT_WEIGHT_CACHE_BYTES) -> None:
        self.weight_cache_bytes = weight_cache_bytes
        self._budget = WeightBudget(weight_cache_bytes)

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return BFVServer(matrix, input_bits, self._budget)

    def session(self) -> ClientSession:
        return BFVSession()
