"""Parameters and costs of the SEAL engine (backend ``bfv-seal``).

Polynomial degree N = 2048, one coefficient modulus q: the 54-bit prime SEAL's
``CoeffModulus.Create(2048, [54])`` returns (SEAL's 128-bit table allows 54 bits at N = 2048:
``CoeffModulus.MaxBitCount(2048, tc128)``), a plaintext modulus t = 2**plain_bits chosen per matrix, and a
result modulus q' = t * 2**g chosen per request. The client chooses them all and checks them; the worker
only validates what it receives. The exactness bound and the planner are the shared ones of
:mod:`veilml.linear.bfv.planner`; this module gives them SEAL's costs (:data:`SEAL_COSTS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from veilml.linear.base import MALFORMED, json_message
from veilml.linear.bfv.planner import MAX_PLAIN_BITS, POLY_DEGREE, CostModel, SchemeParams, plain_bits_for

__all__ = [
    "CIPHERTEXT_FORMAT",
    "COEFF_BITS",
    "RESULT_FORMAT",
    "SEAL_COSTS",
    "SETUP_FORMAT",
    "BFVParams",
    "SealCosts",
    "client_params",
]

COEFF_BITS = 54
PARAMS_FORMAT = "veilml-bfv-params/1"
SETUP_FORMAT = "veilml-bfv-setup/1"
CIPHERTEXT_FORMAT = "veilml-bfv-ct/1"
RESULT_FORMAT = "veilml-bfv-result/1"
MAX_PARAMS_BYTES = 512  # a parameters message is about 100 bytes; longer ones are refused unparsed


@dataclass(frozen=True)
class SealCosts(CostModel):
    """Estimated seconds per operation on one core (measured with tenseal 0.3.18) and bytes per second on the wire."""

    encrypt: float = 700e-6  # client encryption and worker loading of one ciphertext
    product: float = 25e-6  # one ciphertext x plaintext product and sum, in NTT form
    result: float = 300e-6  # one result ciphertext out of NTT form, switched, packed and decrypted
    weight: float = 200e-6  # one weight plaintext encoded and put in NTT form
    bandwidth: float = 100e6

    def seconds(self, params: SchemeParams, shape: tuple[int, int, int], counts: tuple[int, int, int], shift: int) -> float:
        (n_t, _, n_m), (r, j, c) = shape, counts
        bits_down = r * c * (POLY_DEGREE + n_t * n_m) * (params.plain_bits + shift)
        seconds = r * j * self.encrypt + r * j * c * self.product + r * c * self.result
        return seconds + (r * j * POLY_DEGREE * COEFF_BITS + bits_down) / 8 / self.bandwidth

    def weight_seconds(self, shape: tuple[int, int, int], j: int, c: int) -> float:
        return j * c * self.weight

    def weight_bytes(self, shape: tuple[int, int, int], j: int, c: int) -> int:
        return j * c * POLY_DEGREE * 8  # J C plaintexts in NTT form, 8 bytes per coefficient


SEAL_COSTS = SealCosts()


@dataclass(frozen=True)
class BFVParams:
    """The public parameters the client sends for one matrix (``register``'s "evaluation keys")."""

    coeff_modulus: int
    plain_bits: int
    poly_degree: int = POLY_DEGREE

    @property
    def plain_modulus(self) -> int:
        return 1 << self.plain_bits

    def check(self) -> None:
        """Raise ValueError unless these are parameters the backend computes with (cheap checks only)."""
        q, n = self.coeff_modulus, self.poly_degree
        if n != POLY_DEGREE:
            raise ValueError(f"the bfv backend uses polynomial degree {POLY_DEGREE}, got {n}")
        if not (2**40 < q < 2**COEFF_BITS and q % (2 * n) == 1):
            raise ValueError(f"the coefficient modulus must be a prime of 41 to {COEFF_BITS} bits, 1 mod {2 * n}; got {q}")
        if not 2 <= self.plain_bits <= MAX_PLAIN_BITS:
            raise ValueError(f"plain_bits must be in [2, {MAX_PLAIN_BITS}], got {self.plain_bits}")

    def to_bytes(self) -> bytes:
        d = {"format": PARAMS_FORMAT, "poly_degree": self.poly_degree, "coeff_modulus": self.coeff_modulus}
        return json.dumps({**d, "plain_bits": self.plain_bits}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BFVParams:
        try:
            d = json_message(data, PARAMS_FORMAT, MAX_PARAMS_BYTES)
            values = [d["coeff_modulus"], d["plain_bits"], d["poly_degree"]]
            if not all(type(v) is int for v in values):
                raise ValueError("integer fields expected")
        except MALFORMED as error:
            raise ValueError(f"expected a {PARAMS_FORMAT} message from a bfv-seal client ({error})") from None
        params = cls(*values)
        params.check()
        return params


def client_params(d: int, input_bits: int, w_max: int) -> BFVParams:
    """The parameters a client chooses for a (d, m) matrix, checked against SEAL's 128-bit table."""
    from tenseal import sealapi

    if sealapi.CoeffModulus.MaxBitCount(POLY_DEGREE, sealapi.SEC_LEVEL_TYPE.TC128) < COEFF_BITS:
        raise ValueError(f"SEAL's 128-bit table does not allow a {COEFF_BITS}-bit modulus at degree {POLY_DEGREE}")
    (modulus,) = sealapi.CoeffModulus.Create(POLY_DEGREE, [COEFF_BITS])
    plain_bits = plain_bits_for(d, input_bits, w_max)
    if plain_bits > MAX_PLAIN_BITS:
        raise ValueError(f"{input_bits}-bit inputs and weights up to {w_max} over {d} rows need a {plain_bits}-bit t")
    params = BFVParams(modulus.value(), plain_bits)
    params.check()
    return params
