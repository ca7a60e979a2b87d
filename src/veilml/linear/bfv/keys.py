"""The client's secrets of the ``bfv`` engine: symmetric encryption and decryption of arrays of ciphertexts.

A :class:`ClientKey` holds one parameter set and makes a fresh secret for every row block of every request:
a ternary s (uniform in {-1, 0, 1}, as SEAL's) that never leaves the client and is never used again after
that request's result is decrypted. The second polynomial of ciphertext (row block r, inner block j) is the
session's public uniform a_j (:mod:`.prg`, the same for every row block and request), and

    c0_{r,j} = round(q m_{r,j} / t) + e_{r,j} - a_j s_r  (mod q, as residues mod p1 and p2)

with centred binomial noise e (21 coin pairs): J RLWE samples per secret, as in any encryption of J
ciphertexts under one key, and never one secret with the same a_j twice (the
argument is in ``docs/security.md``). Only the c0 residues travel. Decryption (:meth:`ClientKey.decrypt`)
reads switched results at their output coefficients only: ``c1 s_r`` there (c1 the session's hint, the same
for every row block) as float64 products with the secret (:func:`~.encoding.decrypt_outputs`). It checks
sizes, never decrypted values.
"""

from __future__ import annotations

import numpy as np

from veilml.linear.bfv.encoding import decrypt_outputs, selection
from veilml.linear.bfv.ntt import shoup
from veilml.linear.bfv.ops import NumbaKernels
from veilml.linear.bfv.params import MODULI, BFVParams
from veilml.linear.bfv.planner import POLY_DEGREE
from veilml.linear.bfv.prg import noise_words, ternary_secret
from veilml.linear.bfv.threads import split

__all__ = ["ClientKey"]

_PRIMES = np.array(MODULI, dtype=np.int64)


class ClientKey:
    """One parameter set's encryption and decryption with a fresh secret per row block (see the module docstring)."""

    def __init__(self, params: BFVParams) -> None:
        params.check()
        self.params = params
        self._ops = NumbaKernels()
        q, t = params.coeff_modulus, params.plain_modulus
        self._delta = np.array([(q // t) % p for p in MODULI], dtype=np.int64)  # floor(q / t) mod p
        self._rest = q % t

    def secrets(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``count`` fresh ternary secrets (count, N) int64, their transforms (primes, N, count) and Shoup constants."""
        secrets = np.stack([ternary_secret(POLY_DEGREE) for _ in range(count)])
        return (secrets, *self._transforms(secrets))

    def encrypt(
        self, rows: np.ndarray, shape: tuple[int, int, int], counts: tuple[int, int], uniform: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encrypt the rows (n, d) (integers in [0, t)) as the K = R J polynomials of the block shape (n_t, n_d, n_m)
        (:func:`~.encoding.encode_rows`) with the session's a_j (``uniform``: (primes, N, >= J) in the transform
        domain) and a fresh secret per row block: their c0 residues (K, primes, N) int32 and the secrets (R, N)."""
        from veilml.linear.bfv import kernels

        (n_t, n_d, n_m), (r, j) = shape, counts
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 2 or n_t * n_d * n_m != POLY_DEGREE or -(-rows.shape[0] // n_t) != r or -(-rows.shape[1] // n_d) != j:
            raise ValueError(f"rows of shape {rows.shape} do not fill {counts} blocks of the shape {shape}")
        if uniform.shape[2] < j:
            raise ValueError(f"{j} uniform polynomials needed, {uniform.shape[2]} given")
        count = r * j
        secrets, s_hat, s_shoup = self.secrets(r)
        a_s = np.ascontiguousarray(np.tile(uniform[:, :, :j], (1, 1, r)))  # (primes, N, K): column r J + j is a_j
        for block in range(r):
            s, sh = np.ascontiguousarray(s_hat[:, :, block]), np.ascontiguousarray(s_shoup[:, block])
            split(j, lambda lo, hi: kernels.mul_rows(a_s, s, sh, _PRIMES, block * j + lo, block * j + hi), minimum=8)  # noqa: B023
        self._ops.inverse(a_s, POLY_DEGREE)  # a_j s_r in coefficients
        words = noise_words((POLY_DEGREE, count))
        out = np.empty((len(MODULI), POLY_DEGREE, count), np.int32)
        plan = np.array([n_t, n_d, n_m, j], np.int64)
        kernels.encrypt_combine(rows, plan, words, a_s, self._delta, self._rest, self.params.plain_bits, _PRIMES, out)
        return np.ascontiguousarray(out.transpose(2, 0, 1)), secrets

    def decrypt(
        self, hint: np.ndarray, c0: np.ndarray, shape: tuple[int, int, int], bits: int, shift: int, secrets: np.ndarray
    ) -> np.ndarray:
        """Output integers (R, C, P) of R C switched ciphertexts: the session's second polynomials (C, N) (the hint),
        the first ones at the outputs (R, C, P), and the request's secrets (R, N).

        ``round((c0 + c1 s_r) / 2**shift) mod t`` with everything mod 2**bits, ``c1 s_r`` at the outputs as float64
        products with the secrets (:func:`~.encoding.decrypt_outputs`), every row block's in one matrix product.
        """
        if c0.shape[0] != secrets.shape[0] or c0.shape[1] != hint.shape[0]:
            raise ValueError(f"{c0.shape[:2]} result ciphertexts for {secrets.shape[0]} secrets and {hint.shape[0]} hints")
        t = self.params.plain_modulus
        r, c, p = c0.shape
        chosen = np.concatenate([selection(s, *shape).T for s in secrets]).T  # (N, R P): one product for all
        outputs = decrypt_outputs(chosen, hint, c0.transpose(1, 0, 2).reshape(c, r * p), bits, shift, t)
        return outputs.reshape(c, r, p).transpose(1, 0, 2)

    def _transforms(self, secrets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The transforms (primes, N, R) of secrets (R, N) and their Shoup constants (primes, R, N)."""
        s_hat = np.ascontiguousarray(np.stack([secrets.T % p for p in MODULI]).astype(np.int32))
        self._ops.forward(s_hat, POLY_DEGREE)
        return s_hat, np.stack([shoup(s_hat[i].T, p) for i, p in enumerate(MODULI)])
