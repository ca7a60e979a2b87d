"""The batched path's wire format for an input ciphertext: seeded, its residues bit-packed (version 1).

A fresh symmetric BFV encryption is ``(c0, c1) = (-(a s + e) + Delta m, a)`` with ``a`` uniform. SEAL can
replace ``c1`` by the 64-byte seed of the generator that drew ``a`` (its own: BLAKE2xb or SHAKE-256, chosen and
seeded by SEAL from the operating system's randomness; the server's SEAL expands it again when loading):
half the bytes. SEAL still writes every residue of ``c0`` as a 64-bit word; here each prime's residues take
only that prime's bit length (:mod:`veilml.runtime.bitpack`), which saves another 12-25 % at the batched
path's 53-bit primes. Layout::

    b"VLB" 0x01 | PRNG info (1 type byte, 64-byte seed) | c0's residues, prime after prime, each packed
                                                          at that prime's bit length

The receiver knows the parameters (and so the exact size), checks the size, the generator type and that every
residue is below its prime, and hands SEAL a seeded ciphertext in SEAL's own layout, which SEAL checks again.
Nothing of the secret key or the generator's state beyond the seed is sent (the seed is what SEAL itself
sends for a seeded ciphertext; ``a`` is public in any case).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veilml.runtime.seal_bytes import PRNG_INFO_BYTES, PRNG_TYPES, ciphertext_bytes, read_seeded_ciphertext

__all__ = ["MAGIC", "pack_upload", "seal_input", "upload_size"]

MAGIC = b"VLB\x01"


def upload_size(n: int, prime_bits: Sequence[int]) -> int:
    """Bytes of one upload at polynomial degree ``n`` and data primes of these bit lengths."""
    return len(MAGIC) + PRNG_INFO_BYTES + sum(-(-n * int(bits) // 8) for bits in prime_bits)


def pack_upload(seeded: bytes, n: int, primes: Sequence[int]) -> bytes:
    """An upload from what SEAL saves of a seeded ciphertext (``Encryptor.encrypt_symmetric(plain)``)."""
    from veilml.runtime.bitpack import pack  # numba: imported where used (sizes need nothing but numpy)

    c0, info = read_seeded_ciphertext(seeded, n, len(primes))
    parts = [MAGIC, info]
    for residues, p in zip(c0.reshape(len(primes), n), primes):
        out = np.zeros(-(-n * int(p).bit_length() // 8), np.uint8)
        pack(residues, int(p).bit_length(), out)  # residues below p, as SEAL checks when it saves
        parts.append(out.tobytes())
    return b"".join(parts)


def seal_input(data: bytes, n: int, primes: Sequence[int], parms_id: Sequence[int]) -> bytes:
    """SEAL's bytes of the seeded ciphertext an upload carries; ValueError for anything else."""
    from veilml.runtime.bitpack import unpack_values

    size = upload_size(n, [int(p).bit_length() for p in primes])
    if len(data) != size or data[: len(MAGIC)] != MAGIC:
        raise ValueError(
            f"an input is not a batched upload of these parameters ({size} bytes starting {MAGIC!r}, "
            f"got {len(data)} bytes): the client must use the parameters it derived from the program's depth"
        )
    info = data[len(MAGIC) : len(MAGIC) + PRNG_INFO_BYTES]
    if info[0] not in PRNG_TYPES:
        raise ValueError(f"an input names an unknown generator type {info[0]}")
    at, residues = len(MAGIC) + PRNG_INFO_BYTES, []
    for p in primes:
        bits = int(p).bit_length()
        size = -(-n * bits // 8)
        values = unpack_values(data[at : at + size], n, bits)
        if values.max(initial=0) >= p:
            raise ValueError("an input's residue is not below its prime")
        residues.append(values)
        at += size
    return ciphertext_bytes(tuple(parms_id), np.concatenate(residues).astype(np.uint64), info, len(primes))
