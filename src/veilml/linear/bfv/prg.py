"""Randomness of the ``bfv`` engine: uniform polynomials expanded from a seed, the client's noise and secret.

Expansion (both sides). A session has one 32-byte seed, drawn fresh by the client from the operating system
and sent with its parameters. The session's public uniform polynomial a_k (the second polynomial of every
ciphertext of inner block k), modulo prime i, is defined *in the ring's transform domain* (:mod:`.ntt`): its
N slots are the first N values of the stream (k, i), where the stream is the AES-256-CTR keystream under the
seed with the initial counter block ``k (u32) || i (u32) || 0 (u64)`` (big-endian), read as little-endian
32-bit words whose low 27 bits are kept when below the prime (rejection sampling: every kept value is uniform
mod p). Distinct (k, i) give disjoint counter ranges, so every stream is an independent pseudo-random
function output (domain separation per polynomial and prime). The transform is a bijection of (Z/p)^N, so a
uniform vector of slots is a uniform polynomial, and uniform residues mod p1 and p2 are a uniform polynomial
mod q. Why sharing a_k across row blocks and requests is sound (a fresh secret for each): ``docs/security.md``.

The client's own randomness (the secrets, the encryption noise) comes from the operating system's
generator: each ternary secret directly, the noise from AES-256-CTR under a fresh key per request (a
CSPRNG seeded from ``os.urandom``).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from veilml.linear.bfv.params import MODULI, SEED_BYTES
from veilml.linear.bfv.planner import POLY_DEGREE

__all__ = ["STREAM_BLOCKS", "expand_uniform", "keystream", "noise_words", "random_seed", "ternary_secret"]

#: 16-byte AES blocks read per stream at first: 2,080 words for 2,048 values. A word is rejected with
#: probability below 0.0008, so more than 32 rejections in 2,080 words (then the stream is read on) has a
#: probability of about 2**-95.
STREAM_BLOCKS = 520


def _cipher(key: bytes, counter: bytes) -> Any:
    """An AES-256-CTR encryptor (``cryptography``'s) under ``key`` from the initial ``counter`` block."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()


def keystream(key: bytes, counter: bytes, size: int) -> bytes:
    """``size`` bytes of AES-256-CTR keystream under ``key`` from the 16-byte initial ``counter`` block."""
    return _cipher(key, counter).update(bytes(size))


def _stream_counter(k: int, prime: int, block: int = 0) -> bytes:
    return struct.pack(">IIQ", k, prime, block)


def _counter_mode(seed: bytes, first: int, count: int) -> bytes:
    """The first STREAM_BLOCKS blocks of the streams (k, prime) for k = first .. first + count - 1, stream after stream.

    AES-256-CTR's keystream is AES-256 of its counter blocks: all of them are written at once and encrypted in one
    call (one cipher object instead of one per stream; the same bytes as :func:`keystream` per stream).
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    counters = np.zeros((count, len(MODULI), STREAM_BLOCKS), dtype=[("k", ">u4"), ("prime", ">u4"), ("block", ">u8")])
    counters["k"] = (first + np.arange(count))[:, None, None]
    counters["prime"] = np.arange(len(MODULI))[None, :, None]
    counters["block"] = np.arange(STREAM_BLOCKS)[None, None, :]
    return Cipher(algorithms.AES(seed), modes.ECB()).encryptor().update(counters.tobytes())


def _read_on(seed: bytes, k: int, prime: int, p: int) -> np.ndarray:
    """All N values of stream (k, prime), reading as far as it takes (the rare stream with many rejections)."""
    blocks = 2 * STREAM_BLOCKS
    while True:
        words = np.frombuffer(keystream(seed, _stream_counter(k, prime), 16 * blocks), dtype="<u4").astype(np.int64)
        kept = (words & ((1 << 27) - 1))[(words & ((1 << 27) - 1)) < p]
        if kept.size >= POLY_DEGREE:
            return kept[:POLY_DEGREE]
        blocks *= 2


def expand_uniform(seed: bytes, first: int, count: int) -> np.ndarray:
    """The uniform polynomials first .. first + count - 1 of ``seed`` in the transform domain: (primes, N, count) int32."""
    from veilml.linear.bfv import kernels

    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed of {SEED_BYTES} bytes expected, got {len(seed)}")
    words = np.frombuffer(_counter_mode(seed, first, count), dtype="<u4").reshape(len(MODULI) * count, 4 * STREAM_BLOCKS)
    values = np.empty((count, len(MODULI), POLY_DEGREE), np.int32)
    filled = kernels.uniform(words, np.array(MODULI, np.int64), values)
    for s in np.flatnonzero(filled < POLY_DEGREE):  # pragma: no cover - probability ~2**-95 per stream
        k, prime = divmod(int(s), 2)
        values[k, prime] = _read_on(seed, first + k, prime, MODULI[prime])
    out = np.empty((len(MODULI), POLY_DEGREE, count), np.int32)
    kernels.to_columns(values, out)
    return out


def random_seed() -> bytes:
    """A fresh seed (a session's uniform polynomials), from the operating system."""
    return os.urandom(SEED_BYTES)


def noise_words(shape: tuple[int, ...]) -> np.ndarray:
    """Random int64 words from AES-256-CTR under a fresh key from ``os.urandom``: each gives one coefficient of
    centred binomial noise of 21 coin pairs (SEAL's default, sigma 3.24: :func:`~.kernels.cbd`)."""
    count = int(np.prod(shape))
    return np.frombuffer(keystream(os.urandom(32), bytes(16), 8 * count), dtype="<i8").astype(np.int64).reshape(shape)


def ternary_secret(size: int = POLY_DEGREE) -> np.ndarray:
    """A uniform ternary polynomial (coefficients in {-1, 0, 1}), int64, from the operating system's generator."""
    values: list[np.ndarray] = []
    while sum(v.size for v in values) < size:
        draw = np.frombuffer(os.urandom(2 * size), dtype=np.uint8)
        values.append(draw[draw < 255] % 3)  # 255 = 3 * 85: every residue equally likely
    return np.concatenate(values)[:size].astype(np.int64) - 1
