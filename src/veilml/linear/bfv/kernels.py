"""The ``bfv`` engine's CPU kernels (numba, compiled on first use and cached): transforms, GEMM, CRT, switch, bits.

Every array of residues holds int32 words in [0, p) with the prime axis first; arithmetic is signed 64-bit
(numba compiles 32 x 32 -> 64-bit products of int32 words to vector instructions; unsigned 64-bit code
was about 5x slower). Transforms work on the middle axis of ``a[prime, T, B]`` for the columns ``lo:hi`` of B,
so that one call transforms many polynomials with the same twiddle per vector (and threads split columns).
Each kernel has a pure-numpy reference in :mod:`.reference` that the tests compare bit for bit. Kernels
release the GIL (:mod:`.threads` runs them on several cores).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from veilml.runtime.bitpack import pack, unpack

__all__ = [
    "cbd",
    "crt_switch",
    "encrypt_combine",
    "forward",
    "gemm",
    "inverse",
    "matrix_weights",
    "mul_rows",
    "overlap_add",
    "pack",
    "scatter",
    "scatter_weights",
    "to_columns",
    "uniform",
    "unpack",
]

_jit = nb.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
_LAZY_TERMS = 256  # products < 2**54 summed before a reduction: 256 of them stay below 2**62


@_jit
def forward(a: np.ndarray, lo: int, hi: int, w: np.ndarray, wsh: np.ndarray, p: np.ndarray) -> None:
    """In place: the negacyclic transform (:mod:`.ntt`) of columns lo:hi of ``a[prime, T, B]`` (inputs < 4 p)."""
    size = a.shape[1]
    for r in range(a.shape[0]):
        q, q2 = np.int64(p[r]), np.int64(2 * p[r])
        t, m = size, 1
        while m < size:
            t >>= 1
            for i in range(m):
                tw, sh = np.int64(w[r, m + i]), np.int64(wsh[r, m + i])
                for j in range(2 * i * t, 2 * i * t + t):
                    top, bottom = a[r, j, lo:hi], a[r, j + t, lo:hi]  # 1-D views from 0: numba vectorizes these loops
                    for b in range(hi - lo):
                        u = np.int64(top[b])
                        u = u - q2 if u >= q2 else u
                        x = np.int64(bottom[b])
                        v = np.int64(np.int32(x * tw - np.int64(np.int32((x * sh) >> 31)) * q))  # x tw mod p, in [0, 2p)
                        top[b] = u + v
                        bottom[b] = u - v + q2
            m <<= 1
        for j in range(size):
            row = a[r, j, lo:hi]
            for b in range(hi - lo):
                u = np.int64(row[b])
                u = u - q2 if u >= q2 else u
                row[b] = u - q if u >= q else u


@_jit
def inverse(
    a: np.ndarray, lo: int, hi: int, w: np.ndarray, wsh: np.ndarray, p: np.ndarray, scale: np.ndarray, scale_sh: np.ndarray
) -> None:
    """In place: the inverse transform, times ``scale`` (T**-1 for the true inverse), of columns lo:hi (inputs < 2 p)."""
    size = a.shape[1]
    for r in range(a.shape[0]):
        q, q2 = np.int64(p[r]), np.int64(2 * p[r])
        t, m = 1, size
        while m > 1:
            h, first = m >> 1, 0
            for i in range(h):
                tw, sh = np.int64(w[r, h + i]), np.int64(wsh[r, h + i])
                for j in range(first, first + t):
                    top, bottom = a[r, j, lo:hi], a[r, j + t, lo:hi]
                    for b in range(hi - lo):
                        u, v = np.int64(top[b]), np.int64(bottom[b])
                        s = u + v
                        top[b] = s - q2 if s >= q2 else s
                        d = u - v + q2
                        bottom[b] = np.int32(d * tw - np.int64(np.int32((d * sh) >> 31)) * q)
                first += 2 * t
            t <<= 1
            m = h
        tw, sh = np.int64(scale[r]), np.int64(scale_sh[r])
        for j in range(size):
            row = a[r, j, lo:hi]
            for b in range(hi - lo):
                x = np.int64(row[b])
                v = x * tw - np.int64(np.int32((x * sh) >> 31)) * q
                row[b] = v - q if v >= q else v


@_jit
def mul_rows(a: np.ndarray, s: np.ndarray, ssh: np.ndarray, p: np.ndarray, lo: int, hi: int) -> None:
    """In place: ``a[prime, k, b] *= s[prime, k]`` mod p for the columns lo:hi (Shoup constants ``ssh``), in [0, 2p)."""
    for r in range(a.shape[0]):
        q = np.int64(p[r])
        for k in range(a.shape[1]):
            tw, sh = np.int64(s[r, k]), np.int64(ssh[r, k])
            row = a[r, k, lo:hi]
            for b in range(hi - lo):
                x = np.int64(row[b])
                row[b] = np.int32(x * tw - np.int64(np.int32((x * sh) >> 31)) * q)


@_jit
def gemm(x: np.ndarray, w: np.ndarray, out: np.ndarray, p: np.ndarray, lo: int, hi: int) -> None:
    """``out[r, s] = x[r, s] @ w[r, s] mod p[r]`` for slots s in lo:hi: x (primes, T, M, J), w (primes, T, J, C).

    Products of residues are below 2**54: up to 256 of them are summed in int64 before a reduction.
    """
    rows, inner, cols = x.shape[2], x.shape[3], w.shape[3]
    acc = np.zeros(cols, np.int64)
    for r in range(x.shape[0]):
        q = np.int64(p[r])
        for s in range(lo, hi):
            for i in range(rows):
                acc[:] = 0
                for start in range(0, inner, _LAZY_TERMS):
                    for j in range(start, min(inner, start + _LAZY_TERMS)):
                        coefficient, weights = np.int64(x[r, s, i, j]), w[r, s, j]
                        for c in range(cols):
                            acc[c] += coefficient * np.int64(weights[c])
                    for c in range(cols):
                        acc[c] %= q
                result = out[r, s, i]
                for c in range(cols):
                    result[c] = acc[c]


@_jit
def scatter(src: np.ndarray, x: np.ndarray, chunks: int, offset: int) -> None:
    """Rows offset .. offset + chunks of ``x[prime, T, M, J]``: chunk i (length N / chunks) of the coefficients
    ``src[prime, N, J]``, zero-padded to T."""
    length = src.shape[1] // chunks
    for r in range(x.shape[0]):
        for i in range(chunks):
            for k in range(x.shape[1]):
                target = x[r, k, offset + i]
                if k < length:
                    source = src[r, i * length + k]
                    for j in range(target.size):
                        target[j] = source[j]
                else:
                    target[:] = 0


@_jit
def scatter_weights(blocks: np.ndarray, x: np.ndarray, p: np.ndarray) -> None:
    """``x[prime, k, j, c] = blocks[j, c, k] mod p`` for k < L, 0 up to T: signed weight polynomials, zero-padded."""
    length = blocks.shape[2]
    for r in range(x.shape[0]):
        q = np.int64(p[r])
        for k in range(x.shape[1]):
            for j in range(blocks.shape[0]):
                for c in range(blocks.shape[1]):
                    x[r, k, j, c] = (np.int64(blocks[j, c, k]) + q) % q if k < length else 0


@_jit
def matrix_weights(matrix: np.ndarray, n_d: int, n_m: int, x: np.ndarray, p: np.ndarray, lo: int, hi: int) -> None:
    """Rows lo:hi of ``x[prime, k, j, c]``: coefficient k of weight polynomial (j, c) of a (d, m) matrix, mod p.

    The polynomials of :func:`~.encoding.weight_blocks` (coefficient k = mm n_d + kk holds weight
    (j n_d + n_d - 1 - kk, c n_m + mm), zero outside the matrix), zero-padded from L = n_d n_m to T: what
    :func:`scatter_weights` writes from those blocks, read straight from the matrix.
    """
    d, m, length = matrix.shape[0], matrix.shape[1], n_d * n_m
    for r in range(x.shape[0]):
        q = np.int64(p[r])
        for k in range(lo, hi):
            plane = x[r, k]
            if k >= length:
                plane[:, :] = 0
                continue
            mm, kk = k // n_d, k % n_d
            for j in range(plane.shape[0]):
                row, target = j * n_d + n_d - 1 - kk, plane[j]
                if row >= d:
                    target[:] = 0
                    continue
                source = matrix[row]
                for c in range(plane.shape[1]):
                    column = c * n_m + mm
                    v = np.int64(source[column]) if column < m else np.int64(0)
                    target[c] = v + q if v < 0 else v


@_jit
def overlap_add(y: np.ndarray, chunks: int, p: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    """``out[prime, poly, c, :]`` for c in lo:hi: the negacyclic sum of the chunks' linear products ``y[prime, T, poly chunks + i, c]``.

    Chunk i's product covers coefficients i L .. i L + 2 L - 1: its tail adds to chunk i + 1, and the last
    chunk's tail wraps around X**N = -1 onto chunk 0. One chunk (T = N) is the ring product itself. Written in
    tiles of 16 coefficients (whole cache lines of ``out``) while the rows of ``y`` they read stay in cache.
    """
    length = out.shape[3] // chunks
    for r in range(out.shape[0]):
        q = np.int64(p[r])
        for poly in range(out.shape[1]):
            for i in range(chunks):
                row = poly * chunks + i
                before = poly * chunks + (i - 1 if i > 0 else chunks - 1)
                for k0 in range(0, length, 16):
                    for c in range(lo, hi):
                        target = out[r, poly, c]
                        for k in range(k0, min(length, k0 + 16)):
                            v = np.int64(y[r, k, row, c])
                            if chunks > 1:
                                tail = np.int64(y[r, k + length, before, c])
                                v = v + tail if i > 0 else v - tail + q
                            target[i * length + k] = v % q


@_jit
def _switch(v: int, bits: int, q: int, ratio: float) -> int:
    """round(v 2**bits / q) mod 2**bits for 0 <= v < q < 2**54: a float estimate corrected by the exact residual."""
    y = np.int64(np.floor(np.float64(v) * ratio + 0.5))
    residual = (v << bits) - y * q  # wraps in 64 bits, but the true residual is below 2**55: exact
    while 2 * residual >= q:
        y += 1
        residual -= q
    while 2 * residual < -q:
        y -= 1
        residual += q
    return y & ((np.int64(1) << bits) - 1)


@_jit
def crt_switch(res: np.ndarray, indices: np.ndarray, moduli: np.ndarray, inverse_p1: int, bits: int, out: np.ndarray) -> None:
    """``out[c, k]``: coefficient ``indices[k]`` of result polynomial c, CRT'd to [0, q) and switched to 2**bits.

    ``res[prime, c, N]`` are the residues of the C polynomials; ``inverse_p1`` is p1**-1 mod p2.
    """
    p1, p2 = np.int64(moduli[0]), np.int64(moduli[1])
    q = p1 * p2
    ratio = 2.0**bits / np.float64(q)
    for c in range(res.shape[1]):
        for k in range(indices.size):
            index = indices[k]
            low = np.int64(res[0, c, index])
            high = ((np.int64(res[1, c, index]) - low + 2 * p2) * inverse_p1) % p2
            out[c, k] = _switch(low + p1 * high, bits, q, ratio)


@_jit
def uniform(words: np.ndarray, moduli: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rejection sampling: stream s = 2 k + prime of ``words[s]`` (uint32) fills ``out[k, prime, :]``.

    Each word's low 27 bits are kept when below the prime; returns how many values each stream filled (a
    stream that ran out of words is continued by the caller).
    """
    filled = np.zeros(words.shape[0], np.int64)
    size = out.shape[2]
    for s in range(words.shape[0]):
        q, count, row, stream = np.int64(moduli[s % 2]), 0, out[s // 2, s % 2], words[s]
        for i in range(stream.size):
            value = np.int64(stream[i]) & 0x7FFFFFF
            if value < q:
                row[count] = value
                count += 1
                if count == size:
                    break
        filled[s] = count
    return filled


@_jit
def to_columns(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[prime, i, k] = src[k, prime, i]``, by tiles that stay in cache."""
    tile = 32
    for r in range(src.shape[1]):
        for k0 in range(0, src.shape[0], tile):
            for i0 in range(0, src.shape[2], tile):
                for i in range(i0, min(i0 + tile, src.shape[2])):
                    row = dst[r, i]
                    for k in range(k0, min(k0 + tile, src.shape[0])):
                        row[k] = src[k, r, i]


@_jit
def _popcount21(x: int) -> int:
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24) & 0xFF


@_jit
def cbd(words: np.ndarray, out: np.ndarray) -> None:
    """Centred binomial noise of 21 coin pairs from each int64 word: popcount(bits 0..20) - popcount(bits 21..41)."""
    flat, result = words.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        word = np.int64(flat[i])
        result[i] = _popcount21(word & 0x1FFFFF) - _popcount21((word >> 21) & 0x1FFFFF)


@_jit
def encrypt_combine(
    x: np.ndarray,
    shape: np.ndarray,
    words: np.ndarray,
    a_s: np.ndarray,
    delta: np.ndarray,
    rest: int,
    plain_bits: int,
    moduli: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out[prime, i, k] = round(q m_k / t) + e - a s mod p``: the first polynomials of K ciphertexts.

    The messages m_k are the coefficient encoding of the rows ``x`` (n, d) for the block shape
    ``shape = (n_t, n_d, n_m, J)``: ciphertext k = r J + j holds rows r n_t.. and columns j n_d..
    (:func:`~.encoding.encode_rows`). ``words[i, k]`` give the noise (:func:`cbd`), ``a_s[prime, N, K]`` the
    products a s, ``delta[prime]`` floor(q / t) mod p, ``rest`` q mod t: round(q m / t) = floor(q / t) m +
    floor((rest m + t / 2) / t).
    """
    n_t, n_d, n_m, inner = shape[0], shape[1], shape[2], shape[3]
    half = np.int64(1) << (plain_bits - 1)
    blocks = a_s.shape[2] // inner
    for r in range(a_s.shape[0]):
        q, d = np.int64(moduli[r]), np.int64(delta[r])
        for i in range(a_s.shape[1]):
            row, column = i // (n_d * n_m), i % (n_d * n_m)
            target, products, noise = out[r, i], a_s[r, i], words[i]
            for k in range(a_s.shape[2]):  # e - a s, in [0, q)
                word = np.int64(noise[k])
                v = _popcount21(word & 0x1FFFFF) - _popcount21((word >> 21) & 0x1FFFFF) - np.int64(products[k])
                v = v + q if v < 0 else v
                target[k] = v + q if v < 0 else v
            if column >= n_d:  # no input lands on this coefficient
                continue
            for block in range(blocks):
                x_row = block * n_t + row
                if x_row >= x.shape[0]:
                    break
                for j in range(inner):
                    x_column = j * n_d + column
                    if x_column < x.shape[1]:
                        message = np.int64(x[x_row, x_column])
                        scaled = d * message + ((rest * message + half) >> plain_bits)
                        k = block * inner + j
                        target[k] = (np.int64(target[k]) + scaled) % q
