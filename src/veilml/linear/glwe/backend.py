"""The ``glwe`` backend: approximate encrypted linear layers with GLWE packing (``concrete-ml-extensions``).

:class:`GLWEServer` (the worker's half) multiplies seeded GLWE rows by its clear matrix and packs the
LWE results with the compression key; :class:`GLWESession` (the client's half) encrypts and decrypts;
:class:`GLWEBackend` makes both. The scheme and its sizes are described in :mod:`veilml.linear.glwe`;
there is no bootstrapping, so the decrypted integers are approximate.

Cost (2 CPU cores): ~10 ms per output integer when the machine is idle (16-22 ms measured while
another job shared the cores), dominated by the packing key switch, so it scales with
``n * cols * blocks`` and hardly with ``rows``; keygen 7-14 s; ~128 MiB compression key.

Keys. One private key per session (``keys_shared_across_matrices``); ``register`` returns the same
serialized compression key for every matrix, and the server only ever deserializes that. The
parameters are chosen by the client's backend configuration; ``setup()`` carries the server's so
that a mismatch is reported at ``register()``.

The bit budget, the row blocks and the noise model are :mod:`.noise`; the messages :mod:`.wire`
and :mod:`.keys`; the extension's API :mod:`.extension`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, MatrixSpec, pack_frames, unpack_frames
from veilml.linear.glwe.extension import call_fhext, load_fhext, use_cuda
from veilml.linear.glwe.keys import COMPRESSION_KEYS, key_message
from veilml.linear.glwe.noise import NOISE_TAIL_SIGMAS, block_margin, max_input_bits, noise_sigma, plan_row_blocks
from veilml.linear.glwe.wire import (
    CIPHERTEXT_FORMAT,
    RESULT_FORMAT,
    GLWESetup,
    canonical_params,
    pack_header,
    params_digest,
    read_header,
)
from veilml.linear.layers import check_setup_shape
from veilml.runtime.client import read_private_file, write_private_file

__all__ = ["GLWEBackend", "GLWEServer", "GLWESession"]


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
        self.crypto_params = canonical_params(crypto_params)
        acc_bits = self.crypto_params["bits_reserved_for_computation"]
        norm = float(np.sqrt((self.matrix.astype(np.float64) ** 2).sum(axis=0).max()))
        self.limit = 2 ** (acc_bits - 1) - 1 - block_margin(self.crypto_params, self.spec.cols, norm)
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
        if not use_cuda(fhext):
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
        COMPRESSION_KEYS.get(evaluation_keys, self.crypto_params)

    def _read_request(self, ciphertext: bytes) -> tuple[dict[str, int], list[bytes]]:
        frames = unpack_frames(ciphertext)
        if not frames:
            raise ValueError(f"expected a {CIPHERTEXT_FORMAT} message, got no frames")
        header = read_header(frames[0], CIPHERTEXT_FORMAT)
        if header["n"] < 0:
            raise ValueError(f"a {CIPHERTEXT_FORMAT} message cannot hold {header['n']} rows")
        return header, frames

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        fhext = load_fhext()
        header, frames = self._read_request(ciphertext)
        if header["rows"] != self.spec.rows:
            raise ValueError(f"the ciphertext holds rows of {header['rows']} features; this matrix takes {self.spec.rows}")
        expected = len(self.blocks) if header["n"] else 0
        if header["blocks"] != expected or len(frames) != expected + 1:
            raise ValueError(f"expected {expected} encrypted row blocks, got {len(frames) - 1}")
        out = [pack_header(RESULT_FORMAT, header["n"], expected, self.spec.rows)]
        if not expected:
            return pack_frames(out)
        key = COMPRESSION_KEYS.get(evaluation_keys, self.crypto_params)
        for (a, b), frame in zip(self.blocks, frames[1:]):
            largest = header["n"] * self._row_bytes_bound(b - a) + 1024
            if len(frame) > largest:  # the extension cannot be asked how many rows it holds: bound it by size
                raise ValueError(
                    f"an encrypted row block of {len(frame)} bytes holds more than the {header['n']} rows its header "
                    f"announces (at most {largest} bytes); send a well-formed request"
                )
        for index, frame in enumerate(frames[1:]):
            encrypted = call_fhext("read the encrypted rows", fhext.EncryptedMatrix.deserialize, frame)
            result = call_fhext(
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
        self._crypto_params = canonical_params(crypto_params)
        self._key_cache = insecure_key_cache
        self._params_object: Any = None
        self._private_key: Any = None
        self._compression_key: bytes | None = None
        self._setups: dict[str, GLWESetup] = {}

    def _keys(self) -> bytes:
        if self._compression_key is not None:
            return self._compression_key
        fhext = load_fhext()
        params_json = json.dumps(self._crypto_params)
        self._params_object = call_fhext(
            "read the crypto parameters",
            fhext.MatmulCryptoParameters.deserialize,
            params_json,
        )
        path = None
        if self._key_cache is not None:  # tests only: a private key on disk, shared by every session
            path = Path(self._key_cache) / f"glwe-{params_digest(self._crypto_params)}.keys"
            if path.exists() or path.is_symlink():
                private, compression = unpack_frames(read_private_file(path))
                self._private_key = call_fhext("read the cached private key", fhext.PrivateKey.deserialize, private)
                self._compression_key = key_message(self._crypto_params, compression)
                return self._compression_key
        private_key, compression_key = fhext.create_private_key(self._params_object)
        self._private_key = private_key
        raw = compression_key.serialize()
        self._compression_key = key_message(self._crypto_params, raw)
        if path is not None:
            write_private_file(path, pack_frames([private_key.serialize(), raw]))
        return self._compression_key

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        parsed = GLWESetup.from_bytes(setup, spec.rows, spec.cols)
        check_setup_shape("GLWE", name, spec, parsed.rows, parsed.cols, parsed.input_bits)
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
            return pack_frames([pack_header(CIPHERTEXT_FORMAT, 0, 0, spec.rows)])
        fhext = load_fhext()
        centred = rows - setup.offset
        frames = [pack_header(CIPHERTEXT_FORMAT, n, len(setup.blocks), spec.rows)]
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
        header = read_header(frames[0], RESULT_FORMAT)
        n = header["n"]
        if header["rows"] != spec.rows:
            raise ValueError(f"result for {name!r} comes from a matrix with {header['rows']} rows, expected {spec.rows}")
        if n == 0:
            return np.zeros((0, spec.cols), np.int64)
        if header["blocks"] != len(setup.blocks) or len(frames) != len(setup.blocks) + 1:
            raise ValueError(f"result for {name!r} has {len(frames) - 1} row blocks, expected {len(setup.blocks)}")
        fhext = load_fhext()
        poly = self._crypto_params["packing_ks_polynomial_size"]
        total = np.zeros((n, spec.cols), np.int64)
        for frame in frames[1:]:
            encrypted = call_fhext(
                "read the encrypted result",
                fhext.CompressedResultEncryptedMatrix.deserialize,
                frame,
            )
            values = call_fhext(
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
        self.crypto_params = canonical_params(crypto_params)
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
        limit = 2 ** (params["bits_reserved_for_computation"] - 1) - 1 - block_margin(params, spec.cols, norm)
        per_row = 2 ** (spec.input_bits - 1) * abs_max
        if per_row > limit:
            raise ValueError(
                f"{spec.input_bits}-bit inputs times weights up to {abs_max} overflow the GLWE accumulator (±{limit}) "
                f"in a single row; lower input_bits to at most {max_input_bits(limit, abs_max)} or use the exact "
                f"'concrete' backend"
            )
        blocks = 1 if per_row == 0 else math.ceil(spec.rows / (limit // per_row))
        return NOISE_TAIL_SIGMAS * noise_sigma(params, spec.cols, norm) * math.sqrt(blocks)
