"""The client's secret key of the ``bfv`` engine: symmetric encryption and decryption of arrays of ciphertexts.

A :class:`ClientKey` is made fresh per session and parameter set and never leaves the client: a ternary
secret s (uniform in {-1, 0, 1}, as SEAL's) and its transform in both primes. Encryption of K polynomials
m_k at once (:meth:`ClientKey.encrypt`): one fresh seed expands every a_k in the transform domain
(:mod:`.prg`), ``a_k s`` is one slot-wise product and one inverse transform per prime, and

    c0_k = round(q m_k / t) + e_k - a_k s  (mod q, as residues mod p1 and p2)

with centred binomial noise e_k (21 coin pairs). Only the c0 residues and the seed travel. Decryption
(:meth:`ClientKey.decrypt`) reads switched results at their output coefficients only: ``c1 s`` there as float64
products with the secret (:func:`~.encoding.decrypt_outputs`) for few outputs per ciphertext, or over the
integers with transforms mod p1 and p2 for many. It checks sizes, never decrypted values.
"""

from __future__ import annotations

import numpy as np

from veilml.linear.bfv.encoding import decrypt_outputs, output_positions, selection
from veilml.linear.bfv.ntt import shoup
from veilml.linear.bfv.ops import INVERSE_P1, NumbaKernels
from veilml.linear.bfv.params import DECRYPT_LIMB_BITS, MODULI, RNS_COSTS, BFVParams
from veilml.linear.bfv.planner import POLY_DEGREE
from veilml.linear.bfv.prg import expand_uniform, noise_words, random_seed, ternary_secret
from veilml.linear.bfv.threads import split

__all__ = ["ClientKey"]

_PRIMES = np.array(MODULI, dtype=np.int64)


class ClientKey:
    """A fresh secret key for one parameter set (see the module docstring); nothing of it is shared."""

    def __init__(self, params: BFVParams) -> None:
        params.check()
        self.params = params
        self._ops = NumbaKernels()
        self._secret = ternary_secret(POLY_DEGREE)
        s_hat = np.stack([self._secret % p for p in MODULI]).astype(np.int32)[:, :, None]
        self._ops.forward(s_hat, POLY_DEGREE)
        self._s_hat = np.ascontiguousarray(s_hat[:, :, 0])
        self._s_hat_shoup = np.stack([shoup(row, p) for row, p in zip(self._s_hat, MODULI)])
        q, t = params.coeff_modulus, params.plain_modulus
        self._delta = np.array([(q // t) % p for p in MODULI], dtype=np.int64)  # floor(q / t) mod p
        self._rest = q % t
        self._selections: dict[tuple[int, int, int], np.ndarray] = {}

    def secret_transform(self) -> np.ndarray:
        """The secret's transform (primes, N): SEAL's NTT form of it (for the tests that decrypt with SEAL)."""
        return self._s_hat.copy()

    def encrypt(self, rows: np.ndarray, shape: tuple[int, int, int], counts: tuple[int, int]) -> tuple[np.ndarray, bytes]:
        """Encrypt the rows (n, d) (integers in [0, t)) as the K = R J polynomials of the block shape (n_t, n_d, n_m)
        (:func:`~.encoding.encode_rows`): their c0 residues (K, primes, N) int32 and the request's seed."""
        from veilml.linear.bfv import kernels

        (n_t, n_d, n_m), (r, j) = shape, counts
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 2 or n_t * n_d * n_m != POLY_DEGREE or -(-rows.shape[0] // n_t) != r or -(-rows.shape[1] // n_d) != j:
            raise ValueError(f"rows of shape {rows.shape} do not fill {counts} blocks of the shape {shape}")
        count = r * j
        seed = random_seed()
        a_s = expand_uniform(seed, 0, count)  # (primes, N, K): every a_k in the transform domain
        split(count, lambda lo, hi: kernels.mul_rows(a_s, self._s_hat, self._s_hat_shoup, _PRIMES, lo, hi), minimum=8)
        self._ops.inverse(a_s, POLY_DEGREE)  # a_k s in coefficients
        words = noise_words((POLY_DEGREE, count))
        out = np.empty((len(MODULI), POLY_DEGREE, count), np.int32)
        plan = np.array([n_t, n_d, n_m, j], np.int64)
        kernels.encrypt_combine(rows, plan, words, a_s, self._delta, self._rest, self.params.plain_bits, _PRIMES, out)
        return np.ascontiguousarray(out.transpose(2, 0, 1)), seed

    def _selection(self, n_t: int, n_d: int, n_m: int) -> np.ndarray:
        key = (n_t, n_d, n_m)
        if key not in self._selections:
            self._selections[key] = selection(self._secret, n_t, n_d, n_m)
        return self._selections[key]

    def decrypt(self, c1: np.ndarray, c0: np.ndarray, shape: tuple[int, int, int], bits: int, shift: int) -> np.ndarray:
        """Output integers (B, P) of B switched ciphertexts: second polynomials (B, N), first ones at the outputs (B, P).

        ``round((c0 + c1 s) / 2**shift) mod t`` with everything mod 2**bits; ``c1 s`` at the outputs either as float64
        products with the secret (:func:`~.encoding.decrypt_outputs`) or, when cheaper (many outputs per ciphertext,
        :meth:`~.params.RNSCosts.decrypt_by_transforms`), exactly over the integers with transforms mod p1 and p2.
        """
        if not RNS_COSTS.decrypt_by_transforms(c0.shape[1], bits):
            return decrypt_outputs(self._selection(*shape), c1, c0, bits, shift, self.params.plain_modulus)
        positions = output_positions(*shape)
        total = c0.astype(np.uint64)
        c1 = np.asarray(c1, dtype=np.int64)
        limbs = [(c1, 0)] if bits <= DECRYPT_LIMB_BITS else [(c1 & ((1 << 24) - 1), 0), (c1 >> 24, 24)]
        for limb, low in limbs:
            product = self._times_secret(limb, positions).T  # (B, P): c1 s over the integers, |c1 s| < N 2**41 < q / 2
            with np.errstate(over="ignore"):
                total = total + (product.view(np.uint64) << np.uint64(low))
        mask = np.uint64((1 << bits) - 1)
        total &= mask
        values = (((total + np.uint64(1 << (shift - 1))) & mask) >> np.uint64(shift)).astype(np.int64)
        t = self.params.plain_modulus
        return np.where(values >= t // 2, values - t, values)

    def _times_secret(self, polys: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``polys * s`` in Z[X] / (X**N + 1) at ``positions`` for B polynomials (B, N) of non-negative coefficients
        below 2**41: (P, B) int64, exact (the residues mod p1 and p2 CRT'd to the centred range of q)."""
        from veilml.linear.bfv import kernels

        count = polys.shape[0]
        a = np.empty((len(MODULI), POLY_DEGREE, count), np.int32)
        for prime, p in enumerate(MODULI):
            a[prime] = (polys % p).T
        self._ops.forward(a, POLY_DEGREE)
        split(count, lambda lo, hi: kernels.mul_rows(a, self._s_hat, self._s_hat_shoup, _PRIMES, lo, hi), minimum=8)
        self._ops.inverse(a, POLY_DEGREE)
        p1, p2 = MODULI
        low = a[0, positions].astype(np.int64)
        value = low + p1 * ((a[1, positions].astype(np.int64) - low + p2) * INVERSE_P1 % p2)
        q = p1 * p2
        return np.where(value > q // 2, value - q, value)
