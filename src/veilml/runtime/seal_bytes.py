"""SEAL's binary layouts, read and written by hand: the only code of veilml that handles raw SEAL bytes.

``tenseal``'s ``sealapi`` saves and loads SEAL objects only through file paths, always compresses what it
saves (zstd), and cannot set a plaintext's coefficients from Python. So plaintexts and ciphertexts are
written here in SEAL's uncompressed layout and loaded from a private temporary file, and what SEAL saves
is decompressed and parsed here. Layout of SEAL 4.x (``Serialization``, ``Plaintext::save_members``,
``Ciphertext::save_members``, ``DynArray::save_members``, ``UniformRandomGeneratorInfo::save_members``),
every integer little-endian:

- a *header* (16 bytes): magic ``0xA15E`` (u16), header size 16 (u8), SEAL major and minor version (u8
  each), compression mode (u8: 0 none, 1 zlib, 2 zstd), two reserved bytes, then the total size of the
  object including the header (u64); with compression, everything after the header is compressed;
- a plaintext: parms_id (4 x u64), coefficient count (u64), scale (f64), then a DynArray;
- a ciphertext: parms_id (4 x u64), NTT flag (u8), size = number of polynomials (u64), polynomial degree
  N (u64), number of coefficient moduli (u64), scale (f64), correction factor (u64), then a DynArray of
  ``size * N * moduli`` coefficients (polynomial after polynomial), or, for a *seeded* ciphertext, a
  DynArray of only the first polynomial followed by the seed of the second one (a PRNG info);
- a DynArray: its own header, its element count (u64), the elements (u64 each);
- a PRNG info: its own header, the PRNG type (u8: 1 blake2xb, 2 shake256), the 64-byte seed.

The version bytes written are the ones the installed library writes itself (read once from an object it
saves); the ``tenseal`` version is pinned in ``setup.cfg``. Tests check every writer and reader against
SEAL's own encryption and decryption.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import struct
import tempfile
import threading
from typing import Any

import numpy as np

__all__ = [
    "PRNG_INFO_BYTES",
    "add_to_first_polynomial",
    "SealFiles",
    "ciphertext_bytes",
    "plaintext_bytes",
    "read_ciphertext",
    "read_seeded_ciphertext",
    "seal_files",
    "seal_version",
    "unwrap",
]

MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression mode, reserved, total size
PLAIN_MEMBERS = struct.Struct("<4QQd")  # parms_id, coefficient count, scale
CIPHER_MEMBERS = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt_form, size, N, moduli, scale, correction factor
NONE, ZSTD = 0, 2
PRNG_TYPES = (1, 2)  # blake2xb, shake256
SEED_BYTES = 64
PRNG_INFO_BYTES = 1 + SEED_BYTES
_VERSION: tuple[int, int] | None = None


def _header(size: int, mode: int = NONE) -> bytes:
    major, minor = seal_version()
    return HEADER.pack(MAGIC, HEADER.size, major, minor, mode, 0, size)


def _dynarray(values: np.ndarray) -> bytes:
    body = struct.pack("<Q", values.size) + np.ascontiguousarray(values, dtype="<u8").tobytes()
    return _header(HEADER.size + len(body)) + body


def _object(body: bytes) -> bytes:
    return _header(HEADER.size + len(body)) + body


def plaintext_bytes(coeffs: np.ndarray) -> bytes:
    """A plaintext (not in NTT form) with these coefficients, each in [0, t): SEAL checks the range when loading."""
    return _object(PLAIN_MEMBERS.pack(0, 0, 0, 0, coeffs.size, 1.0) + _dynarray(coeffs))


def ciphertext_bytes(parms_id: tuple[int, ...], polys: np.ndarray, seed: bytes | None = None, moduli: int = 1) -> bytes:
    """A ciphertext of the polynomials ``polys`` (size, moduli * N: each polynomial's residues prime after prime),
    not in NTT form.

    With ``seed`` (a PRNG info: type byte and seed), ``polys`` is only the first polynomial and SEAL
    expands the second one from the seed when loading (a seeded ciphertext).
    """
    size, n = (2, polys.shape[-1] // moduli) if seed is not None else (polys.shape[0], polys.shape[-1] // moduli)
    members = CIPHER_MEMBERS.pack(*parms_id, 0, size, n, moduli, 1.0, 1)
    tail = b"" if seed is None else _object(seed)
    return _object(members + _dynarray(polys.reshape(-1)) + tail)


def unwrap(data: bytes, limit: int) -> bytes:
    """The bytes after a SEAL header, decompressed (SEAL saves with zstd); at most ``limit`` bytes."""
    if len(data) < HEADER.size:
        raise ValueError("truncated SEAL object")
    magic, header_size, _, _, mode, _, size = HEADER.unpack_from(data)
    if magic != MAGIC or header_size != HEADER.size or size != len(data):
        raise ValueError("not a SEAL object")
    if mode == NONE:
        return data[HEADER.size :]
    if mode != ZSTD:
        raise ValueError(f"unexpected SEAL compression mode {mode}")
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data[HEADER.size :], max_output_size=limit)


def _read_dynarray(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` u64 values of a DynArray at ``offset``, and the offset after it."""
    end = offset + HEADER.size + 8 + 8 * count
    if len(data) < end or struct.unpack_from("<Q", data, offset + HEADER.size)[0] != count:
        raise ValueError("unexpected SEAL array size")
    values = np.frombuffer(data, dtype="<u8", count=count, offset=offset + HEADER.size + 8)
    return values.astype(np.uint64), end


def read_ciphertext(data: bytes, n: int) -> np.ndarray:
    """The two polynomials (2, n) of a ciphertext SEAL saved (one modulus, not seeded)."""
    body = unwrap(data, CIPHER_MEMBERS.size + HEADER.size + 8 + 16 * n)
    fields = CIPHER_MEMBERS.unpack_from(body)
    if fields[5:8] != (2, n, 1):
        raise ValueError(f"expected a 2-polynomial ciphertext of degree {n}, got size/degree/moduli {fields[5:8]}")
    values, _ = _read_dynarray(body, CIPHER_MEMBERS.size, 2 * n)
    return values.reshape(2, n)


def read_seeded_ciphertext(data: bytes, n: int, moduli: int = 1) -> tuple[np.ndarray, bytes]:
    """The first polynomial (moduli * n,) and the PRNG info (type byte and seed) of a seeded ciphertext SEAL saved."""
    count = moduli * n
    body = unwrap(data, CIPHER_MEMBERS.size + 2 * HEADER.size + 8 + 8 * count + PRNG_INFO_BYTES)
    fields = CIPHER_MEMBERS.unpack_from(body)
    if fields[5:8] != (2, n, moduli):
        raise ValueError(f"expected a seeded ciphertext of degree {n}, got size/degree/moduli {fields[5:8]}")
    c0, offset = _read_dynarray(body, CIPHER_MEMBERS.size, count)
    info = body[offset + HEADER.size : offset + HEADER.size + PRNG_INFO_BYTES]
    if len(body) != offset + HEADER.size + PRNG_INFO_BYTES or info[0] not in PRNG_TYPES:
        raise ValueError("expected a seeded ciphertext (a PRNG info after the first polynomial)")
    return c0, bytes(info)


class SealFiles:
    """Moves bytes in and out of SEAL objects through files in a private temporary directory (mode 0700)."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.directory = tempfile.mkdtemp(prefix="veilml-bfv-", dir=base)
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        self._names = itertools.count()
        self._lock = threading.Lock()

    def _path(self) -> str:
        with self._lock:
            return os.path.join(self.directory, f"{os.getpid()}-{next(self._names)}")

    def load(self, target: Any, context: Any, data: bytes) -> Any:
        """``target.load(context, path)`` from ``data``; returns ``target``."""
        path = self._path()
        try:
            with open(path, "wb") as out:
                out.write(data)
            target.load(context, path)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return target

    def save(self, source: Any) -> bytes:
        """What ``source.save(path)`` writes."""
        path = self._path()
        try:
            source.save(path)
            with open(path, "rb") as saved:
                return saved.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)


_FILES: SealFiles | None = None


def seal_files() -> SealFiles:
    """The process's :class:`SealFiles` (one temporary directory, removed at exit)."""
    global _FILES
    if _FILES is None:
        _FILES = SealFiles()
    return _FILES


def seal_version() -> tuple[int, int]:
    """The (major, minor) version the installed SEAL writes in its headers, read from an object it saves."""
    global _VERSION
    if _VERSION is None:
        from tenseal import sealapi

        data = seal_files().save(sealapi.Plaintext("1"))
        magic, _, major, minor, _, _, _ = HEADER.unpack_from(data)
        if magic != MAGIC or major != 4:
            raise RuntimeError(f"the installed SEAL writes version {major}.{minor}; veilml's bfv backend reads SEAL 4.x")
        _VERSION = (major, minor)
    return _VERSION


def add_to_first_polynomial(data: bytes, moduli: list[int], noise: list[int]) -> bytes:
    """A SEAL ciphertext's bytes (two polynomials in coefficient form over the primes ``moduli``) with the integers
    ``noise`` added to its first polynomial, written back uncompressed (the batched path's flooding)."""

    n, k = len(noise), len(moduli)
    body = bytearray(unwrap(data, CIPHER_MEMBERS.size + HEADER.size + 8 + 8 * 3 * n * k))
    fields = CIPHER_MEMBERS.unpack_from(body)
    if fields[4] != 0 or fields[5] != 2 or fields[6] != n or fields[7] != k:
        raise ValueError(f"expected a 2-polynomial ciphertext of degree {n} over {k} primes, got {fields[4:8]}")
    offset = CIPHER_MEMBERS.size + HEADER.size
    if struct.unpack_from("<Q", body, offset)[0] != 2 * n * k:
        raise ValueError("unexpected ciphertext array size")
    start = offset + 8
    polys = np.frombuffer(bytes(body[start : start + 8 * 2 * n * k]), dtype="<u8").reshape(2, k, n).copy()
    for i, p in enumerate(moduli):
        residues = np.array([v % p for v in noise], dtype=np.uint64)
        polys[0, i] = (polys[0, i] + residues) % np.uint64(p)  # both < p < 2**61: no overflow
    body[start : start + 8 * 2 * n * k] = polys.astype("<u8").tobytes()
    return _header(HEADER.size + len(body)) + bytes(body)
