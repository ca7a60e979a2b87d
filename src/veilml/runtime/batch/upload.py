"""The batched path's wire format for an input ciphertext: seeded, its residues bit-packed (version 2).

A fresh symmetric BFV encryption is ``(c0, c1)`` with ``c1`` a uniform polynomial; the client draws it from a
32-byte seed and sends the seed instead (:mod:`.symmetric`: AES-256-CTR expansion in SEAL's NTT form, the
generator and why it is sound), and each prime's residues of ``c0`` at that prime's bit length
(:mod:`veilml.runtime.bitpack`) instead of SEAL's 64-bit words. Layout::

    b"VLB" 0x02 | seed (32 bytes) | c0's residues, prime after prime, each packed at that prime's bit length

The receiver knows the parameters (and so the exact size), checks the size, the magic and that every residue
is below its prime, expands the seed and hands SEAL a whole ciphertext in SEAL's own layout, which SEAL
checks again. Nothing of the secret key is sent (the seed draws only the public polynomial). Version 1 (SEAL's
own seeded encryption, 65 bytes of generator info) is no longer read: client and server come from one release.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veilml.runtime.batch.symmetric import COLUMNS, SEED_BYTES, uniform_coefficients
from veilml.runtime.seal_bytes import ciphertext_bytes

__all__ = ["MAGIC", "pack_upload", "seal_inputs", "upload_size"]

MAGIC = b"VLB\x02"


def upload_size(n: int, prime_bits: Sequence[int]) -> int:
    """Bytes of one upload at polynomial degree ``n`` and data primes of these bit lengths."""
    return len(MAGIC) + SEED_BYTES + sum(-(-n * int(bits) // 8) for bits in prime_bits)


def pack_upload(seed: bytes, c0: np.ndarray, primes: Sequence[int]) -> bytes:
    """An upload of a ciphertext's seed and first polynomial ``c0`` (primes, n), every residue below its prime."""
    from veilml.runtime.bitpack import pack  # numba: imported where used (sizes need nothing but numpy)

    parts = [MAGIC, seed]
    for residues, p in zip(c0, primes):
        out = np.zeros(-(-residues.size * int(p).bit_length() // 8), np.uint8)
        pack(residues, int(p).bit_length(), out)
        parts.append(out.tobytes())
    return b"".join(parts)


def _read_upload(data: bytes, n: int, primes: Sequence[int]) -> tuple[bytes, np.ndarray]:
    """The seed and c0 (primes * n,) of an upload; ValueError for anything else."""
    from veilml.runtime.bitpack import unpack_values

    size = upload_size(n, [int(p).bit_length() for p in primes])
    if len(data) != size or data[: len(MAGIC)] != MAGIC:
        raise ValueError(
            f"an input is not a batched upload of these parameters ({size} bytes starting {MAGIC!r}, "
            f"got {len(data)} bytes): the client must use the parameters it derived from the program's depth"
        )
    at, residues = len(MAGIC) + SEED_BYTES, []
    for p in primes:
        bits = int(p).bit_length()
        values = unpack_values(data[at : at + -(-n * bits // 8)], n, bits)
        if values.max(initial=0) >= p:
            raise ValueError("an input's residue is not below its prime")
        residues.append(values)
        at += -(-n * bits // 8)
    return data[len(MAGIC) : len(MAGIC) + SEED_BYTES], np.concatenate(residues).astype(np.uint64)


def seal_inputs(uploads: list[bytes], n: int, primes: Sequence[int], parms_id: Sequence[int]) -> list[bytes]:
    """SEAL's bytes of the whole ciphertexts the uploads carry (every upload checked before any is expanded)."""
    read = [_read_upload(data, n, primes) for data in uploads]
    out = []
    for at in range(0, len(read), COLUMNS):
        chunk = read[at : at + COLUMNS]
        c1 = uniform_coefficients([seed for seed, _ in chunk], n, tuple(int(p) for p in primes))
        for (_, c0), second in zip(chunk, c1):
            out.append(ciphertext_bytes(tuple(parms_id), np.stack([c0, second.reshape(-1)]), None, len(primes)))
    return out
