"""The ``glwe`` backend's arithmetic: the accumulator's bit budget, row blocks that never wrap, the noise model.

Bit budget. The default parameters reserve ``bits_reserved_for_computation`` = 27 bits for the
message: decrypted integers live in the signed range ``[-2**26, 2**26)`` and anything outside wraps
silently modulo ``2**27`` (measured: 2073 rows of 255 * 127 wrap to ``-2**27 + ...``). ``x_q @ M``
with ``input_bits``-bit inputs and 8-bit weights needs about ``input_bits + 8 + log2(rows)`` bits,
more than 27 for 8-bit inputs beyond ~2k rows.

No-wrap strategy (exact, decided by the server that knows ``M``, published in ``setup()``):

1. *Centred inputs*: the client encrypts ``x - H`` with ``H = 2**(input_bits-1)`` (codes in
   ``[-H, H-1]``, signed weights and codes are passed as two's-complement ``uint64``, which the
   torus arithmetic treats exactly), and adds back ``H * colsum(M)`` after decryption (``colsum``
   is public anyway: it is the ``col_sums``/``row_sums`` the protocol already publishes). This
   halves the range of one-signed columns.
2. *Row blocks*: the server splits ``M`` into contiguous row blocks (greedily, as long as possible)
   such that in every block and column the largest possible ``|x_c @ M_block[:, j]|`` plus the
   noise margin stays below ``2**26``; the client encrypts one ciphertext per block and sums the
   decrypted partial products in int64, exactly. Random 8-bit weights fit in one block for any
   realistic width; all-127 columns with 8-bit inputs need one block per 4,128 rows.
3. A matrix whose single row already overflows (``input_bits`` > 20 with 8-bit weights) is
   refused by ``server()`` (and ``error_bound``) with a ``ValueError`` naming the limit.

Splitting the *inputs* into low/high bit chunks was rejected: recombining multiplies the noise of
the high chunk by ``2**chunk_bits``.

Noise (``error_bound``). The error of one output integer is dominated by the final modulus switch to
26 bits: rounding the 2048 mask coefficients against a binary key gives
``sigma_out = 2**(27-26) * sqrt((1 + 2048/2) / 12) = 18.5``; rounding in the packing key-switch
decomposition (base 2**14, 2 levels) adds ``sigma = 4.6``; key-switch key noise adds a variance of
0.013 per integer packed in the same output GLWE (``sigma`` 5.2 at 2048 columns); the input's fresh
noise and 39-bit storage rounding scale with ``||M[:, j]||`` but stay below 1 even for 8192 rows of
127. The error does not depend on the encrypted values or (measurably) on the weights. Measured on
the CPU (about 45,000 outputs; rows 64..8192, cols 64..3072, weights 0 to +-127, several keys):
mean -2.5..+5.7, std 16.4..21.9, nearly Gaussian (excess kurtosis 0.03), largest error 79. About
40% of the variance is common to one output row (one output GLWE), so it does not average out
across a row. We use ``sigma = 1.2 * model`` (23-24 for the defaults) and
``error_bound = 7 * sigma * sqrt(blocks)`` (160-166 for one block, 7.3 or more measured standard
deviations: a per-output failure probability below 1e-12 for Gaussian noise); one block's bound is
also the margin kept below ``2**26`` when planning blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["NOISE_MODEL_SLACK", "NOISE_TAIL_SIGMAS", "block_margin", "max_input_bits", "noise_sigma", "plan_row_blocks"]

#: safety factor on the modelled noise standard deviation (covers the measured 18.3..21.7 vs 19.1)
NOISE_MODEL_SLACK = 1.2
#: standard deviations in ``error_bound`` (and in the wrap margin of every block)
NOISE_TAIL_SIGMAS = 7.0


def noise_sigma(params: Mapping[str, Any], cols: int, column_norm: float) -> float:
    """Modelled standard deviation (in output integer units) of one block's error, with slack."""
    bits = params["bits_reserved_for_computation"]
    out_bits = params.get("output_storage_ciphertext_modulus", 64)
    in_bits = params.get("input_storage_ciphertext_modulus", 64)
    modulus_bits = params.get("ciphertext_modulus_bit_count", 64)
    kn = params.get("packing_ks_glwe_dimension", 1) * params["packing_ks_polynomial_size"]
    key_terms = 1 + kn / 2  # binary secret key: E[s**2] = 1/2
    # final modulus switch to ``out_bits`` (body + mask against the key)
    variance = 4.0 ** (bits - out_bits) * key_terms / 12
    # packing key-switch: decomposition rounding and key noise (per packed output integer)
    precision = params.get("packing_ks_base_log", 32) * params.get("packing_ks_level", 1)
    variance += 4.0 ** (bits - precision) * key_terms / 12
    ks_std = params.get("pks_noise_distrubution_stdev", 0.0) * 2.0**bits
    base = 2.0 ** params.get("packing_ks_base_log", 32)
    packed = min(max(cols, 1), params["packing_ks_polynomial_size"])
    variance += packed * kn * params.get("packing_ks_level", 1) * (base**2 / 12) * ks_std**2
    # the input's storage rounding and fresh encryption noise, times the weight column norm
    fresh = params.get("glwe_encryption_noise_distribution_stdev", 0.0) * 2.0**bits
    variance += column_norm**2 * (4.0 ** (bits - min(in_bits, modulus_bits)) / 12 + fresh**2)
    return NOISE_MODEL_SLACK * math.sqrt(variance)


def block_margin(params: Mapping[str, Any], cols: int, column_norm: float) -> int:
    return math.ceil(NOISE_TAIL_SIGMAS * noise_sigma(params, cols, column_norm))


def max_input_bits(limit: int, abs_max: int) -> int:
    """The widest ``input_bits`` whose centred codes times ``abs_max`` stay within ``limit``."""
    return max(0, (limit // max(abs_max, 1)).bit_length())


def plan_row_blocks(matrix: np.ndarray, input_bits: int, limit: int) -> list[tuple[int, int]]:
    """Greedy contiguous row blocks of ``matrix`` whose centred products stay within ``±limit``.

    With inputs centred to ``[-H, H-1]`` (``H = 2**(input_bits-1)``), a block's column ``j`` reaches
    at most ``max(hi*P + H*N, H*P + hi*N)`` in magnitude, where ``P``/``N`` sum its positive/negative
    weights and ``hi = H - 1``.
    """
    rows = matrix.shape[0]
    half = 2 ** (input_bits - 1)
    hi = half - 1
    largest = int(np.abs(matrix).max(initial=0))
    if largest * half > limit:  # also keeps every sum below far from int64 overflow
        raise ValueError(
            f"a weight of magnitude {largest} times {input_bits}-bit inputs exceeds the GLWE accumulator's ±{limit} "
            f"(its signed range minus the noise margin) on its own; lower input_bits to at most "
            f"{max_input_bits(limit, largest)} or use the exact 'concrete' backend"
        )
    positive, negative = np.clip(matrix, 0, None), np.clip(-matrix, 0, None)
    blocks: list[tuple[int, int]] = []
    start, pos, neg = 0, np.zeros(matrix.shape[1], np.int64), np.zeros(matrix.shape[1], np.int64)

    def peak(p: np.ndarray, n: np.ndarray) -> int:
        return int(np.maximum(hi * p + half * n, half * p + hi * n).max(initial=0))

    for row in range(rows):
        p, n = pos + positive[row], neg + negative[row]
        reached = peak(p, n)
        if row > start and reached > limit:
            blocks.append((start, row))
            start, p, n = row, positive[row].astype(np.int64), negative[row].astype(np.int64)
            reached = peak(p, n)
        if reached > limit:  # unreachable after the weight check above (one row peaks at H * |w|); kept as a guard
            raise ValueError(
                f"row {row} of the matrix alone reaches ±{reached} with {input_bits}-bit inputs, beyond the GLWE "
                f"accumulator's ±{limit} (its signed range minus the noise margin); lower input_bits or use the "
                f"exact 'concrete' backend"
            )
        pos, neg = p, n
    blocks.append((start, rows))
    return blocks
