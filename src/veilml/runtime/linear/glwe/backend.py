"""Approximate encrypted linear layers with GLWE packing, on top of ``concrete-ml-extensions``.

The extension multiplies an encrypted integer matrix by a clear one: every input row is one seeded
GLWE ciphertext per 2048 features (only the body is stored, at 39 bits per coefficient: ~10 KiB per
row), the server computes one LWE per output integer and packs them back into GLWE ciphertexts with
a packing key switch (the *compression key*, ~128 MiB, the only evaluation key), then switches the
result to a 26-bit modulus (~6.6 KiB per row plus 3.25 bytes per output integer). There is no
bootstrapping, so nothing clears the noise and the decrypted integers are approximate.

API used (concrete-ml-extensions 0.2.0; the module-level wrappers dispatch to CUDA when
``is_cuda_enabled() and is_cuda_available()``, else to the CPU):

- ``default_params()`` -> JSON crypto parameters; ``MatmulCryptoParameters.deserialize(json)``;
- ``create_private_key(params)`` -> ``(PrivateKey, CompressionKey)`` (client only);
- ``encrypt_matrix(pkey=, crypto_params=, data=)`` with a C-contiguous 2-D ``uint64`` array;
- ``matrix_multiplication(encrypted_matrix, data, compression_key)`` with a 2-D ``uint64`` matrix;
- ``decrypt_matrix(result, private_key, params, n_valid_in_last_glwe)`` -> ``uint64`` (n, cols),
  already sign-extended from the accumulator width;
- every object has ``serialize()`` / ``deserialize(bytes)``; malformed bytes or mismatched inner
  dimensions raise a Rust ``PanicException`` (a ``BaseException``), turned into ``ValueError`` here.

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

Cost (2 CPU cores): ~10 ms per output integer when the machine is idle (16-22 ms measured while
another job shared the cores), dominated by the packing key switch, so it scales with
``n * cols * blocks`` and hardly with ``rows``; keygen 7-14 s; ~128 MiB compression key.

Keys. One private key per session (``keys_shared_across_matrices``); ``register`` returns the same
serialized compression key for every matrix, and the server only ever deserializes that. The
parameters are chosen by the client's backend configuration; ``setup()`` carries the server's so
that a mismatch is reported at ``register()``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..client import read_private_file, write_private_file
from .base import (
    ClientSession,
    LinearBackend,
    LinearServer,
    MatrixSpec,
    pack_frames,
    unpack_frames,
)

__all__ = ["GLWEBackend", "GLWEServer", "GLWESession", "GLWESetup", "plan_row_blocks"]

# what parsing a forged or truncated JSON document can raise
_MALFORMED = (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError)

SETUP_FORMAT = "veilml-glwe-setup/1"
CIPHERTEXT_FORMAT = "veilml-glwe-ct/1"
RESULT_FORMAT = "veilml-glwe-result/1"
KEY_FORMAT = "veilml-glwe-key/1"

#: safety factor on the modelled noise standard deviation (covers the measured 18.3..21.7 vs 19.1)
NOISE_MODEL_SLACK = 1.2
#: standard deviations in ``error_bound`` (and in the wrap margin of every block)
NOISE_TAIL_SIGMAS = 7.0


def _fhext() -> Any:
    try:
        import concrete_ml_extensions
    except ImportError as error:  # pragma: no cover - the tests skip without it
        raise ImportError(
            "the 'glwe' encrypted-linear backend needs concrete-ml-extensions: pip install concrete-ml-extensions"
        ) from error
    return concrete_ml_extensions


def _use_cuda(fhext: Any) -> bool:
    return bool(fhext.is_cuda_enabled() and fhext.is_cuda_available())


def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into the extension, turning its Rust panics (BaseException) into a ValueError."""
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except (ValueError, TypeError):
        raise
    except BaseException as error:  # noqa: BLE001 - pyo3_runtime.PanicException derives from BaseException
        message = str(error).strip().splitlines()
        raise ValueError(f"concrete-ml-extensions could not {what}: {' '.join(message)[:300]}") from None


def _canonical_params(crypto_params: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if crypto_params is None:
        crypto_params = _fhext().default_params()
    if isinstance(crypto_params, (str, bytes)):
        try:
            params = json.loads(crypto_params)
        except json.JSONDecodeError as error:
            raise ValueError(f"GLWE crypto parameters are not valid JSON: {error}") from None
    else:
        params = dict(crypto_params)
    if not isinstance(params, dict):
        raise TypeError("GLWE crypto parameters must be a JSON object")
    for field in (
        "bits_reserved_for_computation",
        "polynomial_size",
        "packing_ks_polynomial_size",
    ):
        if not isinstance(params.get(field), int) or params[field] <= 0:
            raise ValueError(f"GLWE crypto parameters lack a positive integer {field!r}")
    return params


def _params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


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


def _block_margin(params: Mapping[str, Any], cols: int, column_norm: float) -> int:
    return math.ceil(NOISE_TAIL_SIGMAS * noise_sigma(params, cols, column_norm))


def _max_input_bits(limit: int, abs_max: int) -> int:
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
            f"{_max_input_bits(limit, largest)} or use the exact 'concrete' backend"
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


@dataclass(frozen=True)
class GLWESetup:
    """What the server publishes for one matrix (``setup()``): parameters, blocks, the offset fix."""

    crypto_params: dict[str, Any]
    rows: int
    cols: int
    input_bits: int
    blocks: tuple[tuple[int, int], ...]
    col_sums: np.ndarray  # of the server's matrix, exact: the client adds ``offset * col_sums``

    @property
    def offset(self) -> int:
        return 2 ** (self.input_bits - 1)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": SETUP_FORMAT,
                "crypto_params": self.crypto_params,
                "rows": self.rows,
                "cols": self.cols,
                "input_bits": self.input_bits,
                "blocks": [list(b) for b in self.blocks],
                "col_sums": [int(v) for v in self.col_sums],
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> GLWESetup:
        try:
            d = json.loads(bytes(data).decode())
            if d.get("format") != SETUP_FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            rows, cols, input_bits = (
                int(d["rows"]),
                int(d["cols"]),
                int(d["input_bits"]),
            )
            blocks = tuple((int(a), int(b)) for a, b in d["blocks"])
            col_sums = np.asarray(d["col_sums"], dtype=np.int64).reshape(-1)
            params = _canonical_params(d["crypto_params"])
        except _MALFORMED as error:
            raise ValueError(f"not a GLWE setup from a 'glwe' worker ({error})") from None
        edges = [0] + [b for _, b in blocks]
        if (
            not blocks
            or any(a != e for (a, _), e in zip(blocks, edges))
            or edges[-1] != rows
            or col_sums.shape != (cols,)
        ):
            raise ValueError(
                "inconsistent GLWE setup: row blocks must tile the matrix rows and col_sums match its columns"
            )
        return cls(params, rows, cols, input_bits, blocks, col_sums)


def _header(fmt: str, n: int, blocks: int, rows: int) -> bytes:
    return json.dumps({"format": fmt, "n": n, "blocks": blocks, "rows": rows}).encode()


def _read_header(frame: bytes, fmt: str) -> dict[str, int]:
    try:
        d = json.loads(frame.decode())
        if d.get("format") != fmt:
            raise ValueError(f"format {d.get('format')!r}")
        return {k: int(d[k]) for k in ("n", "blocks", "rows")}
    except _MALFORMED as error:
        raise ValueError(f"expected a {fmt} message ({error})") from None


def _key_message(params: Mapping[str, Any], compression_key: bytes) -> bytes:
    """The evaluation key as sent: a header naming the parameters it was made for, then the key."""
    header = json.dumps({"format": KEY_FORMAT, "params": _params_digest(params), "bytes": len(compression_key)})
    return pack_frames([header.encode(), compression_key])


def _read_key_message(data: bytes, params: Mapping[str, Any]) -> bytes:
    """The compression key of a key message, once its header matches these parameters."""
    frames = unpack_frames(data)
    try:
        header = json.loads(frames[0].decode()) if len(frames) == 2 else {}
        fmt, digest, size = header.get("format"), header.get("params"), int(header.get("bytes", -1))
    except _MALFORMED as error:
        raise ValueError(f"expected a {KEY_FORMAT} message ({error})") from None
    if fmt != KEY_FORMAT:
        raise ValueError(f"expected a {KEY_FORMAT} message (a header frame and the key); send GLWESession's keys")
    if digest != _params_digest(params):
        raise ValueError(
            "these GLWE keys were made for other crypto parameters than this worker's; configure the client's "
            "GLWEBackend with the worker's crypto_params"
        )
    if size != len(frames[1]):
        raise ValueError(f"the GLWE key is {len(frames[1])} bytes, its header says {size}")
    return frames[1]


class _CompressionKeyCache:
    """Deserialized compression keys shared by every server in the process (~128 MiB each)."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: list[tuple[str, bytes, Any]] = []  # (parameters digest, key message, key)
        self._lock = threading.Lock()

    def get(self, data: bytes, params: Mapping[str, Any]) -> Any:
        """The deserialized key of a key message (see :func:`_key_message`) for ``params``."""
        digest = _params_digest(params)
        with self._lock:
            for i, (made_for, raw, key) in enumerate(self._entries):
                if made_for == digest and (raw is data or (len(raw) == len(data) and raw == data)):
                    self._entries.insert(0, self._entries.pop(i))
                    return key
        if not data:
            raise ValueError("no GLWE compression key: register this session's key first")
        compression_key = _read_key_message(data, params)
        key = _call("deserialize the compression key", _fhext().deserialize_compression_key, compression_key)
        with self._lock:
            self._entries.insert(0, (digest, data, key))
            del self._entries[self._size :]
        return key


_COMPRESSION_KEYS = _CompressionKeyCache()


class GLWEServer(LinearServer):
    """Holds the clear matrix as two's-complement ``uint64`` row blocks; never a private key."""

    def __init__(
        self,
        matrix: np.ndarray,
        input_bits: int,
        crypto_params: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(matrix, input_bits)
        if not isinstance(input_bits, (int, np.integer)) or isinstance(input_bits, bool) or input_bits < 1:
            raise ValueError(f"input_bits must be a positive integer, got {input_bits!r}")
        if self.matrix.size == 0:
            raise ValueError(f"expected a non-empty matrix, got shape {self.matrix.shape}")
        self.crypto_params = _canonical_params(crypto_params)
        acc_bits = self.crypto_params["bits_reserved_for_computation"]
        norm = float(np.sqrt((self.matrix.astype(np.float64) ** 2).sum(axis=0).max()))
        self.limit = 2 ** (acc_bits - 1) - 1 - _block_margin(self.crypto_params, self.spec.cols, norm)
        self.blocks = tuple(plan_row_blocks(self.matrix, int(input_bits), self.limit))
        self._clear = [np.ascontiguousarray(self.matrix[a:b]).view(np.uint64) for a, b in self.blocks]
        self._cuda_clear: dict[int, tuple[Any, Any]] = {}
        self._setup = GLWESetup(
            self.crypto_params,
            self.spec.rows,
            self.spec.cols,
            int(input_bits),
            self.blocks,
            self.matrix.sum(axis=0),
        ).to_bytes()

    def setup(self) -> bytes:
        return self._setup

    def _clear_block(self, index: int, key: Any, fhext: Any) -> Any:
        if not _use_cuda(fhext):
            return self._clear[index]
        cached = self._cuda_clear.get(index)  # upload each block once per key
        if cached is None or cached[0] is not key:
            cached = (key, fhext.make_cuda_clear_matrix(self._clear[index], key))
            self._cuda_clear[index] = cached
        return cached[1]

    def request_rows(self, ciphertext: bytes) -> int:
        return self._read_request(ciphertext)[0]["n"]

    def _row_bytes_bound(self, width: int) -> int:
        """More bytes than one encrypted row of ``width`` values takes (GLWE bodies at the storage modulus)."""
        poly = self.crypto_params["polynomial_size"]
        bits = self.crypto_params.get("input_storage_ciphertext_modulus", 64)
        return -(-width // poly) * (-(-poly * bits // 8) + 128) + 64

    def check_keys(self, evaluation_keys: bytes) -> None:
        _COMPRESSION_KEYS.get(evaluation_keys, self.crypto_params)

    def _read_request(self, ciphertext: bytes) -> tuple[dict[str, int], list[bytes]]:
        frames = unpack_frames(ciphertext)
        if not frames:
            raise ValueError(f"expected a {CIPHERTEXT_FORMAT} message, got no frames")
        header = _read_header(frames[0], CIPHERTEXT_FORMAT)
        if header["n"] < 0:
            raise ValueError(f"a {CIPHERTEXT_FORMAT} message cannot hold {header['n']} rows")
        return header, frames

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        fhext = _fhext()
        header, frames = self._read_request(ciphertext)
        if header["rows"] != self.spec.rows:
            raise ValueError(
                f"the ciphertext holds rows of {header['rows']} features; this matrix takes {self.spec.rows}"
            )
        expected = len(self.blocks) if header["n"] else 0
        if header["blocks"] != expected or len(frames) != expected + 1:
            raise ValueError(f"expected {expected} encrypted row blocks, got {len(frames) - 1}")
        out = [_header(RESULT_FORMAT, header["n"], expected, self.spec.rows)]
        if not expected:
            return pack_frames(out)
        key = _COMPRESSION_KEYS.get(evaluation_keys, self.crypto_params)
        for (a, b), frame in zip(self.blocks, frames[1:]):
            largest = header["n"] * self._row_bytes_bound(b - a) + 1024
            if len(frame) > largest:  # the extension cannot be asked how many rows it holds: bound it by size
                raise ValueError(
                    f"an encrypted row block of {len(frame)} bytes holds more than the {header['n']} rows its header "
                    f"announces (at most {largest} bytes); send a well-formed request"
                )
        for index, frame in enumerate(frames[1:]):
            encrypted = _call("read the encrypted rows", fhext.EncryptedMatrix.deserialize, frame)
            result = _call(
                f"multiply by row block {self.blocks[index]} (wrong row width?)",
                fhext.matrix_multiplication,
                encrypted,
                self._clear_block(index, key, fhext),
                key,
            )
            out.append(result.serialize())
        return pack_frames(out)


class GLWESession(ClientSession):
    """One private key for every matrix; encrypts centred rows per block, sums decrypted blocks."""

    keys_shared_across_matrices = True

    def __init__(
        self,
        crypto_params: str | Mapping[str, Any] | None = None,
        insecure_key_cache: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self._crypto_params = _canonical_params(crypto_params)
        self._key_cache = insecure_key_cache
        self._params_object: Any = None
        self._private_key: Any = None
        self._compression_key: bytes | None = None
        self._setups: dict[str, GLWESetup] = {}

    def _keys(self) -> bytes:
        if self._compression_key is not None:
            return self._compression_key
        fhext = _fhext()
        params_json = json.dumps(self._crypto_params)
        self._params_object = _call(
            "read the crypto parameters",
            fhext.MatmulCryptoParameters.deserialize,
            params_json,
        )
        path = None
        if self._key_cache is not None:  # tests only: a private key on disk, shared by every session
            path = Path(self._key_cache) / f"glwe-{_params_digest(self._crypto_params)}.keys"
            if path.exists() or path.is_symlink():
                private, compression = unpack_frames(read_private_file(path))
                self._private_key = _call("read the cached private key", fhext.PrivateKey.deserialize, private)
                self._compression_key = _key_message(self._crypto_params, compression)
                return self._compression_key
        private_key, compression_key = fhext.create_private_key(self._params_object)
        self._private_key = private_key
        raw = compression_key.serialize()
        self._compression_key = _key_message(self._crypto_params, raw)
        if path is not None:
            write_private_file(path, pack_frames([private_key.serialize(), raw]))
        return self._compression_key

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        parsed = GLWESetup.from_bytes(setup)
        if (parsed.rows, parsed.cols, parsed.input_bits) != (
            spec.rows,
            spec.cols,
            spec.input_bits,
        ):
            raise ValueError(
                f"the worker's GLWE setup for {name!r} is for a ({parsed.rows}, {parsed.cols}) matrix with "
                f"{parsed.input_bits}-bit inputs, but the client expects {spec}"
            )
        if parsed.crypto_params != self._crypto_params:
            raise ValueError(
                f"the worker serving {name!r} uses other GLWE crypto parameters than this client; configure both "
                f"GLWEBackend objects with the same crypto_params"
            )
        keys = self._keys()
        self.specs[name] = spec
        self._setups[name] = parsed
        return keys

    def _setup(self, name: str) -> GLWESetup:
        self.spec(name)
        return self._setups[name]

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        spec, setup = self.spec(name), self._setup(name)
        rows = spec.check_input(x_q)
        n = rows.shape[0]
        if n == 0:
            return pack_frames([_header(CIPHERTEXT_FORMAT, 0, 0, spec.rows)])
        fhext = _fhext()
        centred = rows - setup.offset
        frames = [_header(CIPHERTEXT_FORMAT, n, len(setup.blocks), spec.rows)]
        for a, b in setup.blocks:
            data = np.ascontiguousarray(centred[:, a:b]).view(np.uint64)
            encrypted = fhext.encrypt_matrix(pkey=self._private_key, crypto_params=self._params_object, data=data)
            frames.append(encrypted.serialize())
        return pack_frames(frames)

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        spec, setup = self.spec(name), self._setup(name)
        frames = unpack_frames(result)
        if not frames:
            raise ValueError(f"expected a {RESULT_FORMAT} message, got no frames")
        header = _read_header(frames[0], RESULT_FORMAT)
        n = header["n"]
        if header["rows"] != spec.rows:
            raise ValueError(
                f"result for {name!r} comes from a matrix with {header['rows']} rows, expected {spec.rows}"
            )
        if n == 0:
            return np.zeros((0, spec.cols), np.int64)
        if header["blocks"] != len(setup.blocks) or len(frames) != len(setup.blocks) + 1:
            raise ValueError(f"result for {name!r} has {len(frames) - 1} row blocks, expected {len(setup.blocks)}")
        fhext = _fhext()
        poly = self._crypto_params["packing_ks_polynomial_size"]
        total = np.zeros((n, spec.cols), np.int64)
        for frame in frames[1:]:
            encrypted = _call(
                "read the encrypted result",
                fhext.CompressedResultEncryptedMatrix.deserialize,
                frame,
            )
            values = _call(
                "decrypt the result",
                fhext.decrypt_matrix,
                encrypted,
                self._private_key,
                self._params_object,
                spec.cols % poly or poly,
            )
            values = np.ascontiguousarray(values, dtype=np.uint64).view(np.int64)
            if values.shape != (n, spec.cols):
                raise ValueError(f"result for {name!r} has shape {values.shape}, expected {(n, spec.cols)}")
            total += values
        return total + setup.offset * setup.col_sums[None, :]


class GLWEBackend(LinearBackend):
    """Approximate (``exact = False``) encrypted-by-clear products; see :func:`GLWEBackend.error_bound`.

    Args:
        crypto_params: JSON (or dict) for ``MatmulCryptoParameters``; the extension's defaults if None.
            Client and worker must use the same.
        insecure_key_cache: a directory in which every session reuses one key pair, written 0600. Tests
            only: it keeps a private key on disk and shares it between sessions, which a hostile
            worker could exploit (reaction attacks); by default each session makes its own key.
    """

    name = "glwe"
    exact = False

    def __init__(
        self,
        crypto_params: str | Mapping[str, Any] | None = None,
        insecure_key_cache: str | os.PathLike | None = None,
    ) -> None:
        self.crypto_params = _canonical_params(crypto_params)
        self.insecure_key_cache = insecure_key_cache

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return GLWEServer(matrix, input_bits, self.crypto_params)

    def session(self) -> ClientSession:
        return GLWESession(self.crypto_params, self.insecure_key_cache)

    def error_bound(self, spec: MatrixSpec, matrix_abs_max: int) -> float:
        """``7 * sigma * sqrt(blocks)``: ~8 measured standard deviations of one output's error.

        ``blocks`` is the worst case of the server's row-block plan for a matrix whose entries are
        at most ``matrix_abs_max`` in magnitude (one block unless a column can exceed ``2**26``).
        """
        abs_max = abs(int(matrix_abs_max))
        norm = abs_max * math.sqrt(spec.rows)
        params = self.crypto_params
        limit = 2 ** (params["bits_reserved_for_computation"] - 1) - 1 - _block_margin(params, spec.cols, norm)
        per_row = 2 ** (spec.input_bits - 1) * abs_max
        if per_row > limit:
            raise ValueError(
                f"{spec.input_bits}-bit inputs times weights up to {abs_max} overflow the GLWE accumulator (±{limit}) "
                f"in a single row; lower input_bits to at most {_max_input_bits(limit, abs_max)} or use the exact "
                f"'concrete' backend"
            )
        blocks = 1 if per_row == 0 else math.ceil(spec.rows / (limit // per_row))
        return NOISE_TAIL_SIGMAS * noise_sigma(params, spec.cols, norm) * math.sqrt(blocks)
