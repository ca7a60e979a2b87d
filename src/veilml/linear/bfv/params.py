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
from dataclasses import dataclass

from veilml.linear.base import MALFORMED, json_message
from veilml.linear.bfv.planner import MAX_PLAIN_BITS, POLY_DEGREE, CostModel, SchemeParams, plain_bits_for

__all__ = [
    "CIPHERTEXT_FORMAT",
    "DECRYPT_LIMB_BITS",
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
SEED_BYTES = 32  # one AES-256 key per request expands every uniform polynomial (:mod:`.prg`)
PARAMS_FORMAT = "veilml-bfv-params/2"
SETUP_FORMAT = "veilml-bfv-setup/2"
CIPHERTEXT_FORMAT = "veilml-bfv-ct/2"
RESULT_FORMAT = "veilml-bfv-result/2"
MAX_PARAMS_BYTES = 512  # a parameters message is about 110 bytes; longer ones are refused unparsed
#: c1 s of a result ciphertext is exact from transforms mod p1 p2 for c1 below 2**41 (|c1 s| < N 2**41 < q / 2);
#: wider results are split into two limbs of at most 24 bits
DECRYPT_LIMB_BITS = 41


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

    # measured on 2 shared cores (benchmarks/results/bfv_kernels.md, one thread): 0.15 ns, 0.8 ns, 110 us, 130 us, 0.08 ns
    mac: float = 0.15e-9  # one multiply-accumulate of the slot-wise GEMM, per prime
    butterfly: float = 0.8e-9  # one butterfly of a transform, per prime
    encrypt: float = 110e-6  # per input ciphertext, besides its transforms: sampling, expansion, packing, checks
    result: float = 130e-6  # per result ciphertext, besides its transforms: CRT, switch, packing, unpacking
    decrypt_mac: float = 0.08e-9  # one multiply-add of the client's decryption (float64, per output and coefficient)
    bandwidth: float = 100e6

    def _transforms(self, n_t: int) -> float:
        """Seconds of transforming one polynomial in both primes as the worker does for blocks of n_t rows."""
        size = transform_size(n_t)
        chunks = 1 if n_t == 1 else n_t
        return 2 * chunks * size // 2 * (size.bit_length() - 1) * self.butterfly

    @property
    def ring(self) -> float:
        """Seconds of one transform of length N in both primes."""
        return POLY_DEGREE // 2 * (POLY_DEGREE.bit_length() - 1) * 2 * self.butterfly

    def decrypt_by_transforms(self, outputs: int, bits: int) -> bool:
        """Whether the client computes ``c1 s`` of a result ciphertext with transforms (two per limb of c1: 41 bits
        or less, one limb) rather than as float64 products at its ``outputs`` coefficients."""
        limbs = 1 if bits <= DECRYPT_LIMB_BITS else 2
        return 2 * limbs * self.ring < POLY_DEGREE * outputs * self.decrypt_mac

    def decrypt_seconds(self, outputs: int, bits: int) -> float:
        """Seconds of ``c1 s`` at the outputs of one result ciphertext, the cheaper way (:meth:`decrypt_by_transforms`)."""
        limbs = 1 if bits <= DECRYPT_LIMB_BITS else 2
        return min(2 * limbs * self.ring, POLY_DEGREE * outputs * self.decrypt_mac)

    def seconds(self, params: SchemeParams, shape: tuple[int, int, int], counts: tuple[int, int, int], shift: int) -> float:
        (n_t, _, n_m), (r, j, c) = shape, counts
        ring = self.ring
        size = transform_size(n_t)
        chunks = 1 if n_t == 1 else n_t
        gemm = 2 * 2 * r * chunks * size * j * c * self.mac  # two polynomials, two primes
        # per input: the client's inverse transform of a s; the worker's transform of c0 (one row per block), or
        # its inverse transform of a and the transforms of both polynomials' chunks
        inputs = r * j * (self.encrypt + 2 * ring + (0 if n_t == 1 else 2 * self._transforms(n_t)))
        outputs = r * c * (self.result + 2 * self._transforms(n_t) + self.decrypt_seconds(n_t * n_m, params.plain_bits + shift))
        up = r * j * 2 * POLY_DEGREE * PRIME_BITS
        down = r * c * (POLY_DEGREE + n_t * n_m) * (params.plain_bits + shift)
        return gemm + inputs + outputs + (up + down) / 8 / self.bandwidth

    def weight_seconds(self, shape: tuple[int, int, int], j: int, c: int) -> float:
        size = transform_size(shape[0])
        return j * c * (size // 2 * (size.bit_length() - 1) * 2 * self.butterfly + 2 * size * 2e-9)

    def weight_bytes(self, shape: tuple[int, int, int], j: int, c: int) -> int:
        return j * c * transform_size(shape[0]) * len(MODULI) * 4  # int32 words, per prime


RNS_COSTS = RNSCosts()


@dataclass(frozen=True)
class BFVParams:
    """The public parameters the client sends for one matrix (``register``'s "evaluation keys")."""

    plain_bits: int
    moduli: tuple[int, ...] = MODULI
    poly_degree: int = POLY_DEGREE

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
        return json.dumps({**d, "plain_bits": self.plain_bits}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BFVParams:
        try:
            d = json_message(data, PARAMS_FORMAT, MAX_PARAMS_BYTES)
            moduli = d["moduli"]
            values = [d["plain_bits"], d["poly_degree"]]
            if not isinstance(moduli, list) or not all(type(v) is int for v in [*values, *moduli]):
                raise ValueError("integer fields expected")
        except MALFORMED as error:
            raise ValueError(f"expected a {PARAMS_FORMAT} message from a bfv client ({error})") from None
        params = cls(values[0], tuple(moduli), values[1])
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
