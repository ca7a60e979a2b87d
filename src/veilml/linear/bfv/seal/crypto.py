"""SEAL through ``tenseal``'s ``sealapi`` (imported on first use): contexts, the client's key, the worker's products.

The client's secret key never leaves :class:`ClientKey`. Its coefficients are read once, by decrypting a
ciphertext made for the purpose (``c0 = 0, c1 = round(q/t)``: ``c0 + c1 s = round(q/t) s``, which
decrypts to s), so that results are decrypted in numpy, at their output coefficients only.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from veilml.linear.bfv.encoding import decrypt_outputs, selection
from veilml.linear.bfv.seal.params import BFVParams
from veilml.runtime.seal_bytes import (
    ciphertext_bytes,
    plaintext_bytes,
    read_ciphertext,
    read_seeded_ciphertext,
    seal_files,
)

__all__ = ["ClientKey", "SealContext", "seal_context"]


def sealapi() -> Any:
    from tenseal import sealapi

    return sealapi


class SealContext:
    """A SEAL BFV context of some parameters, checked at SEAL's 128-bit level, and its evaluator."""

    def __init__(self, params: BFVParams) -> None:
        seal = sealapi()
        params.check()
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(params.poly_degree)
        (modulus,) = seal.CoeffModulus.Create(params.poly_degree, [params.coeff_modulus.bit_length()])
        if modulus.value() != params.coeff_modulus:
            raise ValueError(
                f"the coefficient modulus {params.coeff_modulus} is not SEAL's {params.coeff_modulus.bit_length()}-bit "
                f"prime for degree {params.poly_degree} ({modulus.value()}); use the client's parameters unchanged"
            )
        parms.set_coeff_modulus([modulus])
        parms.set_plain_modulus(params.plain_modulus)
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ValueError(f"SEAL refuses these parameters: {self.context.parameters_error_message()}")
        self.params = params
        self.parms_id = tuple(self.context.first_parms_id())
        self.evaluator = seal.Evaluator(self.context)

    def plaintext(self, coeffs: np.ndarray, ntt: bool = False) -> Any:
        """A SEAL plaintext of these coefficients (each in [0, t)), optionally put in NTT form."""
        plain = seal_files().load(sealapi().Plaintext(), self.context, plaintext_bytes(coeffs))
        if ntt:
            self.evaluator.transform_to_ntt_inplace(plain, list(self.parms_id))
        return plain

    def ciphertext(self) -> Any:
        """An empty SEAL ciphertext, for the evaluator to write into."""
        return sealapi().Ciphertext()

    def load_seeded(self, c0: np.ndarray, seed: bytes) -> Any:
        """A seeded ciphertext (first polynomial and PRNG info) loaded into SEAL, which expands the second."""
        return seal_files().load(sealapi().Ciphertext(), self.context, ciphertext_bytes(self.parms_id, c0, seed))

    def polynomials(self, ciphertext: Any) -> np.ndarray:
        """The two polynomials (2, N) of a ciphertext not in NTT form."""
        return read_ciphertext(seal_files().save(ciphertext), self.params.poly_degree)


_CONTEXTS: dict[BFVParams, SealContext] = {}
_LOCK = threading.Lock()


def seal_context(params: BFVParams) -> SealContext:
    """The process's context for ``params`` (made once; a context holds only public data)."""
    with _LOCK:
        found = _CONTEXTS.get(params)
    if found is None:
        found = SealContext(params)
        with _LOCK:
            found = _CONTEXTS.setdefault(params, found)
            while len(_CONTEXTS) > 64:
                del _CONTEXTS[next(iter(_CONTEXTS))]
    return found


class ClientKey:
    """A fresh secret key for one parameter set: symmetric encryption, and decryption in numpy."""

    def __init__(self, params: BFVParams) -> None:
        seal = sealapi()
        self.seal = SealContext(params)  # a context of its own: nothing of this key is shared
        self.params = params
        generator = seal.KeyGenerator(self.seal.context)
        self._secret_key = generator.secret_key()
        self._encryptor = seal.Encryptor(self.seal.context, self._secret_key)
        self._decryptor = seal.Decryptor(self.seal.context, self._secret_key)
        self._secret = self._coefficients(self._decryptor)
        self._selections: dict[tuple[int, int, int], np.ndarray] = {}

    def _coefficients(self, decryptor: Any) -> np.ndarray:
        """The secret key's coefficients in {-1, 0, 1} (see the module docstring)."""
        n, q, t = self.params.poly_degree, self.params.coeff_modulus, self.params.plain_modulus
        polys = np.zeros((2, n), np.uint64)
        polys[1, 0] = (q + t // 2) // t
        ciphertext = seal_files().load(sealapi().Ciphertext(), self.seal.context, ciphertext_bytes(self.seal.parms_id, polys))
        plain = sealapi().Plaintext()
        decryptor.decrypt(ciphertext, plain)
        values = np.zeros(n, np.int64)
        values[: plain.coeff_count()] = [plain.data(i) for i in range(plain.coeff_count())]
        secret = np.where(values == t - 1, -1, values)
        if not np.isin(secret, (-1, 0, 1)).all():
            raise RuntimeError("the SEAL secret key is not ternary; the bfv backend needs SEAL 4's ternary keys")
        return secret

    def encrypt(self, coeffs: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Seeded symmetric encryption of one polynomial: the first polynomial (N,) and the seed (PRNG info)."""
        plain = self.seal.plaintext(coeffs)
        data = seal_files().save(self._encryptor.encrypt_symmetric(plain))
        return read_seeded_ciphertext(data, self.params.poly_degree)

    def _selection(self, n_t: int, n_d: int, n_m: int) -> np.ndarray:
        key = (n_t, n_d, n_m)
        if key not in self._selections:
            self._selections[key] = selection(self._secret, n_t, n_d, n_m)
        return self._selections[key]

    def decrypt(self, c1: np.ndarray, c0: np.ndarray, shape: tuple[int, int, int], bits: int, shift: int) -> np.ndarray:
        """Output integers (B, P) of B switched ciphertexts (:func:`~veilml.linear.bfv.encoding.decrypt_outputs`)."""
        return decrypt_outputs(self._selection(*shape), c1, c0, bits, shift, self.params.plain_modulus)
