"""Coefficient encoding of ``x @ W`` blocks (Cheetah, Huang et al. 2022; BumbleBee, Lu et al. 2023), and bit packing.

For a block shape (n_t, n_d, n_m) with n_t n_d n_m = N, an (n_t, n_d) block X of rows and an (n_d, n_m)
block W of weights become the polynomials

    x(X) = sum_{i, k} X[i, k] X^(i n_d n_m + k)        w(X) = sum_{k, j} W[k, j] X^(j n_d + n_d - 1 - k)

and the coefficient of x * w in Z[X] / (X^N + 1) at ``i n_d n_m + j n_d + n_d - 1`` is ``sum_k X[i, k] W[k, j]``:
another pair (k', j') reaches that degree only with k' = k and j' = j, and the terms that wrap around
X^N land below degree n_d - 1, never on an output. So one ciphertext-plaintext product gives n_t n_m
dot products, and the products of the J inner blocks add up.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "HINT_LIMB_BITS",
    "decrypt_outputs",
    "encode_rows",
    "encode_weights",
    "output_positions",
    "pack_bits",
    "selection",
    "switch_modulus",
    "unpack_bits",
    "weight_blocks",
]

_CHUNK = 2048  # periods of values packed or unpacked at a time (their words stay in cache)
_LIMB = 41  # bits per limb of a result coefficient in the float64 products of decryption (exact below 2**53)
HINT_LIMB_BITS = _LIMB  # results of at most this many bits: second polynomials kept as float64 for decryption


def encode_rows(x: np.ndarray, n_t: int, n_d: int, n_m: int) -> np.ndarray:
    """Rows (n, d) as polynomials (R, J, N) uint64: block (r, j) holds rows r n_t.. and columns j n_d.."""
    n, d = x.shape
    r, j = -(-n // n_t), -(-d // n_d)
    padded = np.zeros((r * n_t, j * n_d), np.uint64)
    padded[:n, :d] = x
    blocks = padded.reshape(r, n_t, j, n_d).transpose(0, 2, 1, 3)  # (R, J, n_t, n_d)
    polys = np.zeros((r, j, n_t, n_d * n_m), np.uint64)
    polys[..., :n_d] = blocks
    return polys.reshape(r, j, n_t * n_d * n_m)


def weight_blocks(w: np.ndarray, n_d: int, n_m: int) -> np.ndarray:
    """A matrix (d, m) as the first n_d n_m coefficients of its weight polynomials: (J, C, n_d n_m) int64, signed."""
    d, m = w.shape
    j, c = -(-d // n_d), -(-m // n_m)
    padded = np.zeros((j * n_d, c * n_m), np.int64)
    padded[:d, :m] = w
    blocks = padded.reshape(j, n_d, c, n_m).transpose(0, 2, 3, 1)[..., ::-1]  # (J, C, n_m, n_d), k reversed
    return np.ascontiguousarray(blocks.reshape(j, c, n_m * n_d))


def encode_weights(w: np.ndarray, n_t: int, n_d: int, n_m: int, t: int) -> np.ndarray:
    """A matrix (d, m) as polynomials (J, C, N) uint64 with coefficients mod t (negative weights as t + w)."""
    blocks = weight_blocks(w, n_d, n_m)
    polys = np.zeros((*blocks.shape[:2], n_t * n_d * n_m), np.int64)
    polys[..., : n_d * n_m] = blocks
    return np.mod(polys, t).astype(np.uint64)


def output_positions(n_t: int, n_d: int, n_m: int) -> np.ndarray:
    """Coefficient index of output (i, j) of a block, flattened row-major over (n_t, n_m)."""
    i, j = np.meshgrid(np.arange(n_t), np.arange(n_m), indexing="ij")
    return (i * n_d * n_m + j * n_d + n_d - 1).reshape(-1)


def switch_modulus(values: np.ndarray, q: int, bits: int) -> np.ndarray:
    """``floor((values * 2**(bits+1) + q) / (2 q))`` (rounding to nearest) mod 2**bits, exactly, for values in [0, q).

    A float64 estimate is corrected with the exact residual ``values * 2**bits - y q``, which is small
    and so exact in wrapping 64-bit arithmetic (q < 2**54, bits <= 48: the estimate is off by at most one).
    """
    v = np.asarray(values, dtype=np.uint64)
    y = np.rint(v.astype(np.float64) * (2.0**bits / q)).astype(np.uint64)
    with np.errstate(over="ignore"):
        residual = ((v << np.uint64(bits)) - y * np.uint64(q)).view(np.int64)  # exact: |residual| < 2**63
    for _ in range(2):  # the estimate is off by at most one
        up, down = 2 * residual >= q, 2 * residual < -q
        y[up] += np.uint64(1)
        residual[up] -= q
        y[down] -= np.uint64(1)
        residual[down] += q
    return y & np.uint64((1 << bits) - 1)


def _period(bits: int) -> tuple[int, int]:
    """(values, words): ``bits``-bit values start a 64-bit word again every ``values`` values, ``words`` words on."""
    common = math.gcd(bits, 64)
    return 64 // common, bits // common


def _steps(bits: int) -> list[tuple[int, int, int]]:
    """Per value of a period: (its index, the word it starts in, its bit shift in that word)."""
    values, _ = _period(bits)
    return [(i, *divmod(i * bits, 64)) for i in range(values)]


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers below 2**bits (bits <= 64), ``bits`` bits each from bit 0 of a little-endian stream.

    The layout repeats every period of values (:func:`_period`), so each word of a period is assembled for
    all periods at once from the values that start in it and the spill of the one before, a chunk of
    periods at a time so that they stay in cache.
    """
    flat = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    per, width = _period(bits)
    periods = -(-flat.size // per)
    grid = flat
    if periods * per != flat.size:
        grid = np.zeros(periods * per, np.uint64)
        grid[: flat.size] = flat
    grid = grid.reshape(periods, per)
    sources: list[list[tuple[int, int, bool]]] = [[] for _ in range(width)]  # per word: (value, shift, leftwards)
    for i, word, shift in _steps(bits):
        sources[word].append((i, shift, True))
        if shift + bits > 64:  # the high bits spill into the next word
            sources[word + 1].append((i, 64 - shift, False))
    words = np.empty((periods, width), np.uint64)
    total, part = np.empty(min(_CHUNK, periods), np.uint64), np.empty(min(_CHUNK, periods), np.uint64)
    for low in range(0, periods, _CHUNK):
        block = grid[low : low + _CHUNK]
        acc, tmp = total[: len(block)], part[: len(block)]
        for word, contributions in enumerate(sources):
            acc[:] = 0
            for i, shift, leftwards in contributions:
                (np.left_shift if leftwards else np.right_shift)(block[:, i], np.uint64(shift), out=tmp)
                acc |= tmp
            words[low : low + len(block), word] = acc
    return words.reshape(-1).astype("<u8", copy=False).view(np.uint8)[: -(-flat.size * bits // 8)].tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` values of :func:`pack_bits`; ValueError unless ``data`` has exactly their size."""
    size = -(-count * bits // 8)
    if len(data) != size:
        raise ValueError(f"expected {count} values of {bits} bits ({size} bytes), got {len(data)} bytes")
    per, width = _period(bits)
    periods = -(-count // per)
    buffer = np.zeros((periods * width + 1) * 8, np.uint8)
    buffer[:size] = np.frombuffer(data, np.uint8)
    words = buffer.view("<u8").astype(np.uint64, copy=False)
    here, after = words[:-1].reshape(periods, width), words[1:].reshape(periods, width)
    out = np.empty((periods, per), np.uint64)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    steps = _steps(bits)
    for low in range(0, periods, _CHUNK):
        high = slice(low, low + _CHUNK)
        for i, word, shift in steps:
            part = here[high, word] >> np.uint64(shift)
            if shift + bits > 64:
                part |= after[high, word] << np.uint64(64 - shift)
            np.bitwise_and(part, mask, out=out[high, i])
    return out.reshape(-1)[:count]


def selection(secret: np.ndarray, n_t: int, n_d: int, n_m: int) -> np.ndarray:
    """(N, P) float64: column p gives coefficient ``pos_p`` of ``c1 * s`` in Z[X] / (X^N + 1) as ``c1 @ S[:, p]``.

    ``secret`` is the ternary secret's coefficients; ``pos`` the output positions of the block shape. Entry
    (i, p) is s[pos_p - i] for i <= pos_p and -s[N + pos_p - i] past it (X^i X^k wraps past X^N with a minus
    sign): column p is the window of N entries ending at N + pos_p of (-s, s), reversed, so every column is a
    contiguous slice of that sequence read backwards.
    """
    size = secret.size
    positions = output_positions(n_t, n_d, n_m)
    backwards = np.ascontiguousarray(np.concatenate([-secret, secret]).astype(np.float64)[::-1])  # k: (-s, s)[2N-1-k]
    windows = np.lib.stride_tricks.sliding_window_view(backwards, size)  # window w: entries w .. w + N - 1
    return windows[size - 1 - positions].T  # the columns contiguous (a transposed (P, N) array: BLAS reads either)


def decrypt_outputs(selection: np.ndarray, c1: np.ndarray, c0: np.ndarray, bits: int, shift: int, t: int) -> np.ndarray:
    """Output integers (B, P) of B switched ciphertexts: second polynomials (B, N), first ones at the outputs (B, P).

    ``round((c0 + c1 s) / 2**shift) mod t``, centred, with everything mod q' = 2**bits: sums wrap in uint64 and a
    mask reduces them; ``c1 s`` at the outputs is a float64 product of 41-bit limbs of c1 (exact: N 2**41 < 2**53).
    ``c1`` may be given as float64 when bits <= 41 (one limb, as :class:`~.session.BFVSession` keeps its hints).
    """
    total = c0.astype(np.uint64)
    if c1.dtype == np.float64 and bits <= _LIMB:  # one limb, kept as float64 by the caller (values below 2**bits)
        limbs = [(c1, 0)]
    else:
        c1 = c1.astype(np.uint64, copy=False)
        mask = np.uint64((1 << _LIMB) - 1)
        limbs = [(((c1 >> np.uint64(low)) & mask).astype(np.float64), low) for low in range(0, bits, _LIMB)]
    for limb, low in limbs:
        part = np.rint(limb @ selection).astype(np.int64).view(np.uint64)  # exact: |sum| < N 2**LIMB = 2**52
        with np.errstate(over="ignore"):
            total = total + (part << np.uint64(low))
    mask = np.uint64((1 << bits) - 1)
    total &= mask
    values = (((total + np.uint64(1 << (shift - 1))) & mask) >> np.uint64(shift)).astype(np.int64)
    return np.where(values >= t // 2, values - t, values)
