"""Parameters, formats and planner costs of the ``bfv`` engine (RNS, numba kernels).

Parameters. Polynomial degree N = 2048 and the coefficient modulus q = p1 p2 of the two largest primes below
2**27 that are 1 mod 4096 (:data:`MODULI`, hard-coded: a test checks their primality, their roots of unity
and SEAL's 128-bit table). q has 54 bits, the most the HE standard's (and SEAL's) 128-bit table allows at
N = 2048 for a ternary secret and noise of sigma 3.2 (:data:`MAX_COEFF_BITS_128`): the budget and the security
of the SEAL engine's single 54-bit prime, in two residues that fit 32-bit words. The plaintext modulus is
t = 2**plain_bits per matrix, the result modulus q' = t * 2**g per request: both from
:mod:`veilml.linear.bfv.planner`, whose exactness bound holds for this q (only q, t and N enter it; the
encryption rounds ``q m / t`` to the nearest integer and adds centred binomial noise of 21 coin pairs, as
SEAL does). The client derives and checks them all; the worker accepts nothing else.

Costs. :class:`RNSCosts` gives the planner the seconds of a block shape on one core, measured on the
kernels of :mod:`.kernels` (``benchmarks/bfv_kernels.py``), and bytes at 100 MB/s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from veilml.linear.base import MALFORMED, json_message
from veilml.linear.bfv.planner import MAX_PLAIN_BITS, POLY_DEGREE, CostModel, SchemeParams, plain_bits_for

__all__ = [
    "CIPHERTEXT_FORMAT",
    "MAX_BLOCK_ROWS",
    "MAX_COEFF_BITS_128",
    "MODULI",
    "PRIME_BITS",
    "RESULT_FORMAT",
    "RNS_COSTS",
    "SEED_BYTES",
    "SETUP_FORMAT",
    "BFVParams",
    "RNSCosts",
    "client_params",
    "transform_size",
]

#: the two largest primes below 2**27 that are 1 mod 4096 (both are also 1 mod 8192)
MODULI = (134176769, 134111233)
PRIME_BITS = 27  # each residue of a coefficient travels in 27 bits
#: largest log2 q at N = 2048 for 128-bit security (HE standard, classical; SEAL's ``MaxBitCount(2048, tc128)``)
MAX_COEFF_BITS_128 = 54
SEED_BYTES = 32  # one AES-256 key per session expands the uniform polynomials (:mod:`.prg`)
PARAMS_FORMAT = "veilml-bfv-params/3"
SETUP_FORMAT = "veilml-bfv-setup/2"
CIPHERTEXT_FORMAT = "veilml-bfv-ct/3"
RESULT_FORMAT = "veilml-bfv-result/3"
MAX_PARAMS_BYTES = 512  # a parameters message is about 180 bytes; longer ones are refused unparsed


#: the most rows per block of a plan (:meth:`RNSCosts.inner_sizes`)
MAX_BLOCK_ROWS = 32


def transform_size(n_t: int) -> int:
    """T: the length of the worker's transforms for blocks of ``n_t`` rows (see :mod:`.product`).

    One row per block: the ring's own negacyclic transform of length N. Otherwise each ciphertext is cut into
    n_t chunks of L = N / n_t coefficients whose linear products with a weight polynomial of L coefficients are
    computed by zero-padded transforms of length 2 L, so that weights cost 2 words per weight and prime
    whatever n_t (the ring's transform would cost n_t).
    """
    return POLY_DEGREE if n_t == 1 else 2 * POLY_DEGREE // n_t


@dataclass(frozen=True)
class RNSCosts(CostModel):
    """Seconds per operation on one core of the numba kernels (``benchmarks/bfv_kernels.py``), bytes at ``bandwidth``."""

    # measured on 2 shared cores (benchmarks/results/bfv_kernels.md, one numba thread, BLAS's own)
    mac: float = 0.2e-9  # one multiply-accumulate of the slot-wise GEMM of the hints, per prime (not planned: once)
    dgemm_mac: float = 0.06e-9  # one multiply-add of the worker's float64 matrix product, per prime
    butterfly: float = 1.0e-9  # one butterfly of a transform, per prime
    encrypt: float = 220e-6  # per input ciphertext, besides its transforms: noise, combining, packing, checks
    result: float = 280e-9  # per output sent: unpacking, checks, CRT, switch, packing, unpacking
    decrypt_mac: float = 0.075e-9  # one multiply-add of the client's decryption (float64, per output and coefficient)
    bandwidth: float = 100e6

    @property
    def ring(self) -> float:
        """Seconds of one transform of length N in both primes."""
        return POLY_DEGREE // 2 * (POLY_DEGREE.bit_length() - 1) * 2 * self.butterfly

    def inner_sizes(self, n_t: int) -> list[int]:
        """One column per weight polynomial (n_m = 1): the worker's products are one matrix product (:mod:`.product`).
        At most MAX_BLOCK_ROWS rows per block: a request's cost hardly depends on n_t (every ciphertext is full), and
        one block shape for every row count from 32 on means one set of hints per matrix (:mod:`.session`)."""
        return [POLY_DEGREE // n_t] if n_t <= MAX_BLOCK_ROWS else []

    def seconds(self, params: SchemeParams, shape: tuple[int, int, int], counts: tuple[int, int, int], shift: int) -> float:
        """A request's seconds: the first polynomials' matrix product (the second ones' products are the session's
        hint, paid once per matrix and shape: :mod:`.product`)."""
        (n_t, n_d, _), (r, j, c) = shape, counts
        ring = self.ring
        bits = params.plain_bits + shift
        gemm = 2 * r * n_t * j * n_d * c * self.dgemm_mac  # two primes
        # per input the client's inverse transform of a s, per row block the transform of its fresh secret
        inputs = r * j * (self.encrypt + ring) + r * ring
        results = r * c * n_t * (self.result + POLY_DEGREE * self.decrypt_mac)
        up = r * j * 2 * POLY_DEGREE * PRIME_BITS
        down = r * c * n_t * bits
        return gemm + inputs + results + (up + down) / 8 / self.bandwidth

    def weight_seconds(self, shape: tuple[int, int, int], j: int, c: int) -> float:
        return 0.0  # the product reads the clear matrix

    def weight_bytes(self, shape: tuple[int, int, int], j: int, c: int) -> int:
        return 0


RNS_COSTS = RNSCosts()


@dataclass(frozen=True)
class BFVParams:
    """The public parameters the client sends for one matrix (``register``'s "evaluation keys").

    ``seed`` expands the public uniform polynomials a_j of the session (:mod:`.prg`), drawn by the client: a
    worker never chooses them. It is not compared: parameters are equal when the scheme's are.
    """

    plain_bits: int
    moduli: tuple[int, ...] = MODULI
    poly_degree: int = POLY_DEGREE
    seed: bytes = field(default=b"", compare=False, repr=False)

    @property
    def coeff_modulus(self) -> int:
        """q, the product of the moduli."""
        q = 1
        for p in self.moduli:
            q *= p
        return q

    @property
    def plain_modulus(self) -> int:
        return 1 << self.plain_bits

    def check(self) -> None:
        """Raise ValueError unless these are parameters the engine computes with (cheap checks only)."""
        if self.poly_degree != POLY_DEGREE:
            raise ValueError(f"the bfv backend uses polynomial degree {POLY_DEGREE}, got {self.poly_degree}")
        if tuple(self.moduli) != MODULI:
            raise ValueError(f"the bfv backend's coefficient moduli are {list(MODULI)}, got {list(self.moduli)}")
        if not 2 <= self.plain_bits <= MAX_PLAIN_BITS:
            raise ValueError(f"plain_bits must be in [2, {MAX_PLAIN_BITS}], got {self.plain_bits}")

    def to_bytes(self) -> bytes:
        d = {"format": PARAMS_FORMAT, "poly_degree": self.poly_degree, "moduli": list(self.moduli)}
        return json.dumps({**d, "plain_bits": self.plain_bits, "seed": self.seed.hex()}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BFVParams:
        try:
            d = json_message(data, PARAMS_FORMAT, MAX_PARAMS_BYTES)
            moduli = d["moduli"]
            values = [d["plain_bits"], d["poly_degree"]]
            if not isinstance(moduli, list) or not all(type(v) is int for v in [*values, *moduli]):
                raise ValueError("integer fields expected")
            seed = d["seed"]
            if not isinstance(seed, str) or len(seed) != 2 * SEED_BYTES:
                raise ValueError(f"a seed of {SEED_BYTES} bytes in hexadecimal expected")
            seed = bytes.fromhex(seed)
        except MALFORMED as error:
            raise ValueError(f"expected a {PARAMS_FORMAT} message from a bfv client ({error})") from None
        params = cls(values[0], tuple(moduli), values[1], seed)
        params.check()
        return params


def client_params(d: int, input_bits: int, w_max: int) -> BFVParams:
    """The parameters a client chooses for a (d, m) matrix: q fits the 128-bit table, t the largest product."""
    params = BFVParams(plain_bits_for(d, input_bits, w_max))
    if params.coeff_modulus.bit_length() > MAX_COEFF_BITS_128:
        raise ValueError(f"a {params.coeff_modulus.bit_length()}-bit modulus is over the 128-bit table at N = {POLY_DEGREE}")
    if params.plain_bits > MAX_PLAIN_BITS:
        raise ValueError(f"{input_bits}-bit inputs and weights up to {w_max} over {d} rows need a {params.plain_bits}-bit t")
    params.check()
    return params
