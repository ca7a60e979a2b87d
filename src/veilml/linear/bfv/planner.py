"""The exactness bound and the block planner shared by both ``bfv`` engines (numba RNS and SEAL).

Exactness. An output is v = sum_k x_k w_k with 0 <= x_k < 2**input_bits and |w_k| <= w_max, so
|v| <= d * (2**input_bits - 1) * w_max =: V. With t the smallest power of two above 2 V, v mod t read
in (-t/2, t/2) is v. A fresh ciphertext holds ``c0 + c1 s = round(q m / t) + e (mod q)``; after the products
and their sum over the J inner blocks, ``c0 + c1 s = (q/t) v + E (mod q)`` where, per coefficient,

- ``E = sum_j (e_j + eps_j) * w_j``: ``e_j`` is fresh encryption noise (centred binomial with 21 coin pairs,
  SEAL's default and the numba engine's: variance proxy 10.5; SEAL's clipped Gaussian variant, sigma 3.2,
  has proxy 10.24) and ``eps_j`` in [-1/2, 1/2] the rounding of ``q m / t``. At most ``J n_d n_m`` weights
  touch one coefficient, so ``|sum e_j w_j| <= TAIL * sqrt(10.5 * J n_d n_m) * w_max`` except with
  probability 2**-(FAILURE_BITS + 1) (sub-Gaussian tail bound, the e_j being independent) and
  ``|sum eps_j w_j| <= J n_d n_m w_max / 2`` always. Call the sum B.
- Switching to q' (round ``q'/q * c`` coefficient-wise) gives ``c0' + c1' s = 2**g v + (q'/q) E + r0 +
  r1 s (mod q')`` with |r0|, |r1_i| <= 1/2 and a ternary s: the rounding term is at most (N + 1)/2, always.

Decryption ``round((c0' + c1' s) / 2**g) mod t`` is exact when ``2**(g-1) (1 - 2 t B / q) > (N + 1) / 2``:
g is the smallest such integer. The only failure is the noise tail: at most 2**-FAILURE_BITS per output
integer (2**-64), nothing else is probabilistic. With q about 2**54 the noise fits for d up to 32,896
with 8-bit inputs and |w| <= 128 (t = 2**31, one output per block); wider matrices are refused when the
client registers. Only q (``params.coeff_modulus``), t and N enter: both engines use this analysis.

Planner. A block shape (n_t, n_d, n_m), powers of two with n_t n_d n_m = N, cuts an (n, d) @ (d, m)
product into R = ceil(n / n_t) row blocks, J = ceil(d / n_d) inner blocks and C = ceil(m / n_m) column
blocks: R J ciphertexts up, R C ciphertexts down (N + n_t n_m coefficients each) and, unless the worker
keeps the weights encoded for blocks of n_t rows (its ``cached_rows``), J C weight polynomials to encode
per request. Each engine says what a shape costs (:class:`CostModel`: seconds on one core, bytes at its
bandwidth); the planner picks the cheapest shape whose noise fits.

Every cost of a shape whose weights are kept encoded is proportional to R, so for each n_t there is one
best such shape whatever the row count (:func:`cached_shape`): a worker keeps exactly those shapes, one per
n_t <= cached_rows (:func:`cache_bytes`), and the planner uses nothing else for those n_t (the SEAL engine;
the RNS engine keeps no encoded weights and plans one column per weight polynomial,
:meth:`CostModel.inner_sizes`). The plan is a function of public data only, so the worker derives it from
the row count and refuses any other.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

__all__ = [
    "FAILURE_BITS",
    "MAX_CACHED_ROWS",
    "MAX_PLAIN_BITS",
    "MAX_RESULT_BITS",
    "POLY_DEGREE",
    "CostModel",
    "Plan",
    "SchemeParams",
    "cache_bytes",
    "cached_shape",
    "max_product",
    "noise_bound",
    "plain_bits_for",
    "plan_product",
    "result_bytes",
    "result_shift",
    "row_block_limit",
]

POLY_DEGREE = 2048
FAILURE_BITS = 64  # at most 2**-64 probability that one output integer is wrong
NOISE_PROXY = 10.5  # variance proxy of one coefficient of fresh noise (centred binomial, 21 coin pairs)
TAIL = math.sqrt(2 * (FAILURE_BITS + 2) * math.log(2))  # P(|X| > TAIL * proxy_sigma) <= 2**-(FAILURE_BITS + 1)
MAX_PLAIN_BITS = 40
MAX_RESULT_BITS = 48  # the switch and the decryption stay exact in float64 estimates and 64-bit sums
MAX_CACHED_ROWS = 64  # the largest n_t a worker keeps weights encoded for


class SchemeParams(Protocol):
    """What the planner reads of an engine's parameters (both engines' ``BFVParams``)."""

    @property
    def coeff_modulus(self) -> int: ...

    @property
    def plain_bits(self) -> int: ...

    @property
    def plain_modulus(self) -> int: ...

    @property
    def poly_degree(self) -> int: ...


@dataclass(frozen=True)
class Plan:
    """How one product is cut into blocks, and the result modulus q' = t * 2**shift."""

    n_t: int
    n_d: int
    n_m: int
    shift: int

    def counts(self, n: int, d: int, m: int) -> tuple[int, int, int]:
        """(R, J, C): row blocks, inner blocks, column blocks."""
        return -(-n // self.n_t), -(-d // self.n_d), -(-m // self.n_m)


class CostModel(abc.ABC):
    """What a block shape costs one engine: estimated seconds on one core (bytes counted at a bandwidth).

    Instances are frozen dataclasses (hashable): the planner's caches are keyed by them.
    """

    @abc.abstractmethod
    def seconds(self, params: SchemeParams, shape: tuple[int, int, int], counts: tuple[int, int, int], shift: int) -> float:
        """Client and worker seconds and wire time of a request of R row blocks, weights already encoded."""

    def inner_sizes(self, n_t: int) -> list[int]:
        """The n_d an engine computes with for blocks of n_t rows (every power of two that fits, unless it says less)."""
        return _powers(POLY_DEGREE // n_t)

    @abc.abstractmethod
    def weight_seconds(self, shape: tuple[int, int, int], j: int, c: int) -> float:
        """Seconds to encode the J C weight polynomials of one shape (paid per request unless cached)."""

    @abc.abstractmethod
    def weight_bytes(self, shape: tuple[int, int, int], j: int, c: int) -> int:
        """Bytes the J C encoded weight polynomials of one shape take in the worker's cache."""


def max_product(d: int, input_bits: int, w_max: int) -> int:
    """V: the largest |x @ w| of one output (see the module docstring)."""
    return d * (2**input_bits - 1) * w_max


def plain_bits_for(d: int, input_bits: int, w_max: int) -> int:
    """log2 of the smallest power of two t with V < t / 2."""
    return max(2, (2 * max_product(d, input_bits, w_max)).bit_length())


def noise_bound(j: int, n_d: int, n_m: int, w_max: int) -> float:
    """B: the noise of one output coefficient before the switch, except with probability 2**-(FAILURE_BITS+1)."""
    touching = j * n_d * n_m  # weights that touch one coefficient of the sum over the J inner blocks
    return TAIL * math.sqrt(NOISE_PROXY * touching) * w_max + touching * w_max / 2


def result_shift(params: SchemeParams, j: int, n_d: int, n_m: int, w_max: int) -> int | None:
    """g of q' = t * 2**g (see the module docstring), or None when the noise does not fit the modulus."""
    budget = 1 - 2 * params.plain_modulus * noise_bound(j, n_d, n_m, w_max) / params.coeff_modulus
    if budget <= 0:
        return None
    g = 1
    while 2 ** (g - 1) * budget <= (params.poly_degree + 1) / 2:
        g += 1
    return g if params.plain_bits + g <= MAX_RESULT_BITS else None


def row_block_limit(n: int) -> int:
    """The largest n_t for ``n`` rows: the power of two at or above n (a request cannot hide as many rows as it
    announces)."""
    return min(2 ** max(0, (n - 1).bit_length()), POLY_DEGREE)


def _powers(limit: int) -> list[int]:
    return [2**k for k in range(POLY_DEGREE.bit_length()) if 2**k <= limit]


def _shape_cost(
    params: SchemeParams, costs: CostModel, n: int, d: int, m: int, w_max: int, n_t: int, n_d: int
) -> tuple[float, Plan] | None:
    """Estimated seconds of the shape (n_t, n_d, .) for ``n`` rows, weights already encoded; None if its noise does not fit."""
    n_m = POLY_DEGREE // (n_t * n_d)
    counts = -(-n // n_t), -(-d // n_d), -(-m // n_m)
    shift = result_shift(params, counts[1], n_d, n_m, w_max)
    if shift is None:
        return None
    return costs.seconds(params, (n_t, n_d, n_m), counts, shift), Plan(n_t, n_d, n_m, shift)


@lru_cache(maxsize=4096)
def cached_shape(params: SchemeParams, costs: CostModel, d: int, m: int, w_max: int, n_t: int) -> Plan | None:
    """The one shape of ``n_t`` rows per block whose weights a worker keeps encoded: the cheapest per row block.

    Its cost for any row count is R times its cost for one block, so it is the planner's best shape of n_t
    rows for every row count. None when no shape of n_t rows keeps the noise within the modulus.
    """
    best: tuple[float, int, Plan] | None = None
    for n_d in costs.inner_sizes(n_t):
        found = _shape_cost(params, costs, n_t, d, m, w_max, n_t, n_d)
        if found is not None and (best is None or (found[0], n_d) < best[:2]):
            best = (found[0], n_d, found[1])
    return None if best is None else best[2]


def cache_bytes(params: SchemeParams, costs: CostModel, d: int, m: int, w_max: int, cached_rows: int) -> int:
    """Bytes a worker keeping the weights of a (d, m) matrix encoded for ``cached_rows`` rows needs at most:
    one shape per n_t <= cached_rows (:func:`cached_shape`), as the engine stores it (:meth:`CostModel.weight_bytes`)."""
    total = 0
    for n_t in _powers(min(cached_rows, POLY_DEGREE)):
        shape = cached_shape(params, costs, d, m, w_max, n_t)
        if shape is not None:
            _, j, c = shape.counts(0, d, m)
            total += costs.weight_bytes((shape.n_t, shape.n_d, shape.n_m), j, c)
    return total


@lru_cache(maxsize=4096)
def plan_product(params: SchemeParams, costs: CostModel, n: int, d: int, m: int, w_max: int, cached_rows: int) -> Plan:
    """The cheapest block shape for ``n`` rows of ``(n, d) @ (d, m)`` whose noise fits (see the module docstring).

    A deterministic function of public values: the client plans with it, and the worker derives the same
    plan from the row count and refuses any other (a request cannot choose a costlier one).
    """
    best: tuple[float, tuple[int, int, int], Plan] | None = None
    for n_t in _powers(row_block_limit(n)):
        if n_t <= cached_rows:  # weights kept encoded: only the cached shape of n_t rows, nothing to encode
            shape = cached_shape(params, costs, d, m, w_max, n_t)
            candidates = [] if shape is None else [shape.n_d]
        else:
            candidates = costs.inner_sizes(n_t)
        for n_d in candidates:
            found = _shape_cost(params, costs, n, d, m, w_max, n_t, n_d)
            if found is None:
                continue
            seconds, plan = found
            if n_t > cached_rows:
                _, j, c = plan.counts(n, d, m)
                seconds += costs.weight_seconds((plan.n_t, plan.n_d, plan.n_m), j, c)
            key = (seconds, (n_t, n_d, plan.n_m), plan)
            if best is None or key[:2] < best[:2]:
                best = key
    if best is None:
        raise ValueError(
            f"no block shape keeps the noise of a ({d}, {m}) product with weights up to {w_max} within the "
            f"{params.coeff_modulus.bit_length()}-bit modulus; lower input_bits or weight_bits"
        )
    return best[2]


def result_bytes(params: SchemeParams, plan: Plan, n: int, d: int, m: int) -> int:
    """Bytes of the values of a result of ``n`` rows: R C ciphertexts of N + n_t n_m switched coefficients."""
    r, _, c = plan.counts(n, d, m)
    return -(-r * c * (POLY_DEGREE + plan.n_t * plan.n_m) * (params.plain_bits + plan.shift) // 8)
