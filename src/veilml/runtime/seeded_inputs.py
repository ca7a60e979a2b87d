"""veilml's seeded input ciphertexts: small on the wire, fast on both sides.

An LWE ciphertext is a mask of ``d`` uniform words and a body ``<mask, s> + m * delta + e``. Only
the body depends on the secret key: the masks can be regenerated from a public seed, so a row
travels as one 16-byte seed and one 8-byte body per ciphertext (concrete's own seeded inputs carry
a seed per ciphertext: 24 bytes each). Masks are the AES-128-CTR keystream of the seed, expanded
with the processor's AES instructions (through ``cryptography``/OpenSSL); concrete-python's
wheel expands its seeds with a software AES, which made encrypting (client) and decompressing
(server) a thermometer row of breast cancer cost more than its whole circuit (0.1-0.2 ms per
ciphertext on each side; here about 3 microseconds to encrypt one, and the server expands only the
ones the circuit reads, see :mod:`veilml.compiler.narrowing`).

The circuit itself is compiled with uncompressed inputs (``Configuration(input_encryption=
"veilml")``, the default); the server expands the seed and writes concrete's uncompressed value
into the input's learned layout (:class:`~veilml.runtime.validation.StructureTemplate`), so
concrete only ever sees bytes of the shape it produced itself.

The encryption is the one concrete performs, checked against it in the tests: the key is the
input's LWE secret key of the client's key set, ``delta = 2**(64 - width - 1)`` (one bit of
padding) and the noise is a centred Gaussian of the input's variance (the specs' ``variance``,
relative to the torus), drawn from the operating system's CSPRNG.

Payload: ``magic (8) | version (u16) | reserved (u16) | dimension d (u32) | count n (u64) |
seed (16) | n bodies (u64)``, little-endian. The mask of ciphertext ``i`` is words ``[i * (d + 1),
i * (d + 1) + d)`` of the keystream (the word after each mask is not used).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.compiler.key_sizes import SEEDED_HEADER_BYTES
from veilml.errors import VeilmlError
from veilml.runtime.validation import LayoutError, StructureTemplate

__all__ = ["InputSpec", "SeededEncryptor", "SeededInputError", "SeededInputs", "input_secret_key", "seeded_input_spec"]

MAGIC = b"veilmlSI"
VERSION = 1
_HEAD = struct.Struct("<8sHHIQ16s")  # 40 bytes: the bodies that follow are 8-byte aligned
assert _HEAD.size == SEEDED_HEADER_BYTES
WORD = 8


class SeededInputError(VeilmlError, ValueError):
    """A seeded input payload that is malformed or not made for this circuit's input."""


@dataclass(frozen=True)
class InputSpec:
    """What encrypting a circuit's input needs, read from its (public) client specs."""

    shape: tuple[int, ...]  # the clear input's shape
    dimension: int  # LWE dimension d of the input key
    key_id: int
    variance: float  # of the encryption noise, relative to the torus
    width: int  # bits of the encoded integer
    signed: bool

    @property
    def count(self) -> int:
        """Ciphertexts per input: one per clear value."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def data_bytes(self) -> int:
        """Bytes of concrete's uncompressed ciphertexts (masks and bodies)."""
        return WORD * self.count * (self.dimension + 1)


def seeded_input_spec(client_specs: Any) -> InputSpec | None:
    """The :class:`InputSpec` of a one-input circuit whose input concrete takes uncompressed, else None.

    ``client_specs`` is concrete's ``ClientSpecs`` or its serialization. Anything but the native
    64-bit modulus and integer encoding that concrete uses for tree and matrix circuits is refused.
    """
    from veilml.runtime.security import check_lwe

    text = client_specs.serialize() if hasattr(client_specs, "serialize") else client_specs
    program = json.loads(text)
    circuits = program.get("circuits", [])
    if len(circuits) != 1 or len(circuits[0].get("inputs", [])) != 1:
        return None
    lwe = circuits[0]["inputs"][0].get("typeInfo", {}).get("lweCiphertext")
    if lwe is None or lwe.get("compression") != "none":
        return None
    encryption, integer = lwe["encryption"], lwe["encoding"].get("integer")
    shape = tuple(int(d) for d in lwe["abstractShape"]["dimensions"])
    dimension = int(encryption["lweDimension"])
    problems = []
    if "native" not in encryption.get("modulus", {}).get("modulus", {}) or lwe.get("integerPrecision") != 64:
        problems.append("a modulus other than 2**64")
    if integer is None or "native" not in integer.get("mode", {}):
        problems.append("an encoding other than concrete's native integer one")
    if [int(d) for d in lwe["concreteShape"]["dimensions"]] != [*shape, dimension + 1]:
        problems.append("a concrete shape that is not the clear shape times (d + 1) words")
    keys = {int(k["id"]): int(k["params"]["lweDimension"]) for k in program["keyset"]["lweSecretKeys"]}
    if keys.get(int(encryption["keyId"])) != dimension:
        problems.append("an input key whose dimension differs from the ciphertext's")
    if problems:
        raise SeededInputError(f"this circuit's input has {', '.join(problems)}; compile it with input_encryption='concrete'")
    check_lwe(dimension, float(encryption["variance"]), "the circuit's input encryption")
    width = int(integer["width"])
    if not 1 <= width <= 62:
        raise SeededInputError(f"this circuit's input is {width} bits wide; seeded inputs handle 1 to 62 bits")
    return InputSpec(shape, dimension, int(encryption["keyId"]), float(encryption["variance"]), width, bool(integer["isSigned"]))


def input_secret_key(keys: Any, spec: InputSpec) -> np.ndarray:
    """The input's binary LWE secret key, as ``d`` words, from concrete's ``Keys`` of a client.

    concrete serializes a secret key as a versioned header followed by its ``d`` coefficients;
    the length and the binary values are checked, so another layout fails here, not silently.
    """
    secret_keys = keys._keyset.get_client_keys().get_secret_keys()  # concrete-python 2.10-2.11
    key = secret_keys[spec.key_id]
    if key.param.dimension() != spec.dimension:
        raise SeededInputError(
            f"secret key {spec.key_id} has dimension {key.param.dimension()}, the input needs {spec.dimension}"
        )
    raw = key.serialize()
    if len(raw) < WORD * spec.dimension:
        raise SeededInputError("concrete's secret key is shorter than its dimension: this concrete-python is not supported")
    coefficients = np.frombuffer(raw[-WORD * spec.dimension :], dtype="<u8").astype(np.uint64)
    if not np.all(coefficients <= 1):
        raise SeededInputError(
            "concrete's secret key is not binary in the expected layout: this concrete-python is not supported"
        )
    return coefficients


_CHUNK = 1 << 20  # keystream bytes per OpenSSL call: a zero block this size is encrypted again and again
_ZEROS = bytes(_CHUNK)


def _keystream_into(seed: bytes, size: int, buffer: Any) -> None:
    """Write ``size`` bytes of the AES-128-CTR keystream of ``seed`` at the start of ``buffer``
    (a writable buffer with 15 bytes of room beyond ``size``: OpenSSL may write a whole last block)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    view = memoryview(buffer).cast("B")
    for start in range(0, size, _CHUNK):
        step = min(_CHUNK, size - start)
        encryptor.update_into(_ZEROS[:step] if step < _CHUNK else _ZEROS, view[start:])


def _keystream(seed: bytes, count: int, dimension: int) -> np.ndarray:
    """The keystream of ``seed`` as a writable (count, d + 1) array of words."""
    size = WORD * count * (dimension + 1)
    buffer = np.empty(size + 15, dtype=np.uint8)  # not zeroed: every byte used is written
    _keystream_into(seed, size, buffer)
    return buffer[:size].view("<u8").reshape(count, dimension + 1)


def _mask_products(seed: bytes, count: int, dimension: int, key: np.ndarray) -> np.ndarray:
    """``<mask_i, key>`` for the ``count`` masks of ``seed``, without holding the whole keystream:
    block by block in one reused buffer of about 1 MiB (a 94 MiB keystream cost more in page faults
    than in AES)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    row_bytes = WORD * (dimension + 1)
    rows = max(1, _CHUNK // row_bytes)
    buffer = np.empty(rows * row_bytes + 15, dtype=np.uint8)
    zeros = _ZEROS if rows * row_bytes <= _CHUNK else bytes(rows * row_bytes)
    products = np.empty(count, dtype=np.uint64)
    for start in range(0, count, rows):
        n = min(rows, count - start)
        encryptor.update_into(zeros[: n * row_bytes] if n < rows else zeros[: rows * row_bytes], buffer)
        products[start : start + n] = buffer[: n * row_bytes].view("<u8").reshape(n, dimension + 1) @ key
    return products


def _masks_of(seed: bytes, picks: np.ndarray, dimension: int) -> np.ndarray:
    """The masks of ciphertexts ``picks`` only: CTR mode starts anywhere (its counter is the block
    index, a 128-bit big-endian integer), so the server expands only what the circuit reads."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, stride = algorithms.AES(seed), WORD * (dimension + 1)
    masks = np.empty((len(picks), dimension), dtype="<u8")
    for j, i in enumerate(picks):
        block, skip = divmod(int(i) * stride, 16)
        stream = Cipher(key, modes.CTR(block.to_bytes(16, "big"))).encryptor().update(bytes(skip + WORD * dimension))
        masks[j] = np.frombuffer(stream, dtype="<u8", count=dimension, offset=skip)
    return masks


def _gaussian_noise(count: int, stddev: float) -> np.ndarray:
    """``count`` rounded centred Gaussian samples of ``stddev`` (in 2**-64 torus units) as words.

    Box-Muller on uniforms from ``os.urandom``: the noise hides the message, so it comes from the
    operating system's CSPRNG, never from numpy's generators.
    """
    uniform = (np.frombuffer(os.urandom(16 * count), dtype="<u8").reshape(2, count) >> np.uint64(11)).astype(np.float64)
    u1, u2 = (uniform + 0.5) * 2.0**-53  # in (0, 1): log(u1) is finite
    gaussian = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return np.rint(gaussian * stddev).astype(np.int64).view(np.uint64)


class SeededEncryptor:
    """The client's side: encrypts clear inputs under ``secret_key`` into seeded payloads.

    ``shape``: what the client encrypts per call, by default the circuit's input shape; the whole
    encoded row when the circuit reads only some of it (a narrowed input: the server drops the rest).
    """

    def __init__(self, spec: InputSpec, secret_key: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
        if secret_key.shape != (spec.dimension,):
            raise ValueError(f"the secret key has shape {secret_key.shape}, the input needs ({spec.dimension},)")
        self.spec = spec
        self.shape = spec.shape if shape is None else tuple(int(d) for d in shape)
        # one more coefficient, 0, for the word after each mask: the product then runs on contiguous rows
        self._key = np.append(np.asarray(secret_key, dtype=np.uint64), np.uint64(0))
        self._stddev = math.sqrt(spec.variance) * 2.0**64

    def encrypt(self, values: np.ndarray) -> bytes:
        """A seeded payload of ``values`` (of :attr:`shape`, integers within the input's width)."""
        spec = self.spec
        values = np.asarray(values)
        if values.shape != self.shape or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"expected integers of shape {self.shape}, got {values.dtype} of shape {values.shape}")
        low, high = (-(2 ** (spec.width - 1)), 2 ** (spec.width - 1) - 1) if spec.signed else (0, 2**spec.width - 1)
        if values.size and (values.min() < low or values.max() > high):
            raise ValueError(f"input values must be in [{low}, {high}] ({spec.width} bits), got [{values.min()}, {values.max()}]")
        seed, count = os.urandom(16), values.size
        delta = np.uint64(1 << (64 - spec.width - 1))
        plain = values.reshape(-1).astype(np.int64).view(np.uint64) * delta  # wraps: two's complement for signed values
        bodies = _mask_products(seed, count, spec.dimension, self._key) + plain + _gaussian_noise(count, self._stddev)
        head = _HEAD.pack(MAGIC, VERSION, 0, spec.dimension, count, seed)
        return head + bodies.astype("<u8").tobytes()


class SeededInputs:
    """The server's side: checks a seeded payload and writes concrete's uncompressed value.

    ``template`` is the learned layout of concrete's serialization of this input (a header, the
    ciphertext words, a trailer); its variable bytes must be exactly the ciphertext words.
    ``columns`` and ``row_size``, for a narrowed input (:mod:`veilml.compiler.narrowing`): the client
    sends rows of ``row_size`` values, of which the circuit reads ``columns``.
    """

    def __init__(
        self, spec: InputSpec, template: StructureTemplate, columns: np.ndarray | None = None, row_size: int | None = None
    ) -> None:
        gaps, end = [], 0
        for offset, value in template.runs:
            if offset > end:
                gaps.append((end, offset))
            end = offset + len(value)
        if end < template.length:
            gaps.append((end, template.length))
        if sum(b - a for a, b in gaps) != spec.data_bytes:
            raise LayoutError(
                "this circuit's input layout does not hold exactly its uncompressed ciphertext words; "
                "compile it with input_encryption='concrete'"
            )
        self.spec, self.template, self._gaps = spec, template, gaps
        self.wire_count, self._picks = spec.count, None
        if columns is not None:
            columns = np.asarray(columns, dtype=np.int64).reshape(-1)
            rows, rest = divmod(spec.count, max(len(columns), 1))
            if row_size is None or rest or not len(columns) or columns.min() < 0 or columns.max() >= row_size:
                raise ValueError(f"input columns {len(columns)} do not fit rows of {row_size} values and this circuit's input")
            self.wire_count = rows * int(row_size)
            self._picks = (np.arange(rows)[:, None] * int(row_size) + columns[None, :]).reshape(-1)

    @property
    def payload_bytes(self) -> int:
        return _HEAD.size + WORD * self.wire_count

    def to_concrete(self, payload: bytes) -> bytes:
        """concrete's serialized input value of a seeded ``payload``, which is checked first."""
        spec = self.spec
        if len(payload) != self.payload_bytes:
            raise SeededInputError(
                f"a seeded input of this circuit is {self.payload_bytes:,} bytes, got {len(payload):,}; "
                "encrypt with this model's client and send the ciphertext unmodified"
            )
        magic, version, reserved, dimension, count, seed = _HEAD.unpack_from(payload)
        if magic != MAGIC or version != VERSION or reserved != 0:
            raise SeededInputError("not a veilml seeded input (bad magic, version or reserved field)")
        if (dimension, count) != (spec.dimension, self.wire_count):
            raise SeededInputError(
                f"this seeded input holds {count} ciphertexts of dimension {dimension}; "
                f"the circuit takes {self.wire_count} of dimension {spec.dimension}"
            )
        bodies = np.frombuffer(payload, dtype="<u8", offset=_HEAD.size)
        out = bytearray(self.template.length)
        start, _ = self._gaps[0]
        if self._picks is None and len(self._gaps) == 1 and self.template.length - start >= spec.data_bytes + 15:
            _keystream_into(seed, spec.data_bytes, memoryview(out)[start:])  # in place: no copy
            words = np.frombuffer(out, dtype="<u8", count=spec.count * (spec.dimension + 1), offset=start)
            words.reshape(spec.count, spec.dimension + 1)[:, spec.dimension] = bodies
        else:
            if self._picks is None:
                words = _keystream(seed, spec.count, spec.dimension)
                words[:, spec.dimension] = bodies
            else:  # the ciphertexts the circuit reads: only their masks are expanded
                words = np.empty((spec.count, spec.dimension + 1), dtype="<u8")
                words[:, : spec.dimension] = _masks_of(seed, self._picks, spec.dimension)
                words[:, spec.dimension] = bodies[self._picks]
            data, position = memoryview(words.reshape(-1)).cast("B"), 0
            for start, stop in self._gaps:
                out[start:stop] = data[position : position + stop - start]
                position += stop - start
        for offset, value in self.template.runs:  # after the keystream: it may have run past its gap
            out[offset : offset + len(value)] = value
        return bytes(out)  # concrete's deserializer takes bytes only
