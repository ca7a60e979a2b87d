"""Structural checks of serialized concrete objects, before any of their bytes reach native code.

For one compiled circuit, concrete serializes the ciphertext of an input, and the evaluation keys,
to a fixed number of bytes, and only the seeds and coefficients vary from one key set or one
encryption to the next: the structure (Cap'n Proto segment tables, pointers, list lengths,
parameters) is the same every time. A :class:`StructureTemplate` records that layout — the length
and the constant bytes — learned from a few samples, and :meth:`StructureTemplate.check` refuses
bytes that do not follow it, so a foreign or tampered key or ciphertext is refused in Python
instead of crashing (or quietly misleading) concrete's deserializer.

Positions are compared in aligned 8-byte words (Cap'n Proto's unit): a word is constant when it
is identical in every sample. Comparing single bytes would be wrong: two random coefficients share
a given byte with probability 1/256, so two samples of 12 MB of keys agree by chance on ~49,000
bytes that a third key set then contradicts; a random 8-byte word repeats with probability 2^-64.

:func:`learn_circuit_layout` learns the templates of a circuit's evaluation keys and inputs from two
throw-away key sets that it drops before returning: it returns only public layout data.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.errors import VeilmlError

__all__ = ["CircuitLayout", "LayoutError", "StructureTemplate", "learn_circuit_layout", "learn_template"]

WORD = 8
_TEMPLATE_MAGIC = b"veilmlST"
_LAYOUT_MAGIC = b"veilmlCL"
_VERSION = 1
_TEMPLATE_HEAD = struct.Struct(">8sHQI")  # magic, version, length, number of runs
_RUN = struct.Struct(">QI")  # offset, size
_LAYOUT_HEAD = struct.Struct(">8sHI")  # magic, version, number of templates


class LayoutError(VeilmlError, ValueError):
    """Bytes do not have the layout the circuit gives to this kind of data (or a template is malformed)."""


def _as_bytes(data: Any, what: str) -> bytes | memoryview:
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, memoryview):
        return data.cast("B")
    raise LayoutError(f"{what}: expected bytes, got {type(data).__name__}")


@dataclass(frozen=True)
class StructureTemplate:
    """The fixed length and the constant bytes of one kind of serialized data.

    ``runs`` holds ``(offset, constant bytes)`` pairs, sorted and disjoint.
    """

    length: int
    runs: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 0:
            raise LayoutError(f"a template length is a non-negative integer, got {self.length!r}")
        end = 0
        for offset, value in self.runs:
            if not isinstance(offset, int) or not isinstance(value, bytes) or not value:
                raise LayoutError("template runs are (offset, non-empty bytes) pairs")
            if offset < end or offset + len(value) > self.length:
                raise LayoutError("template runs must be sorted, disjoint and inside the length")
            end = offset + len(value)

    @property
    def constant_bytes(self) -> int:
        """How many byte positions are checked."""
        return sum(len(value) for _, value in self.runs)

    def check(self, data: bytes, what: str = "these bytes", fix: str = "") -> None:
        """Raise :class:`LayoutError` unless ``data`` has this length and these constant bytes.

        ``what`` starts the message ("this ciphertext is not one of this circuit's inputs") and
        ``fix`` ends it (what the sender should do instead).
        """
        view = _as_bytes(data, what)
        tail = f"; {fix}" if fix else ""
        if len(view) != self.length:
            raise LayoutError(f"{what}: it is {len(view):,} bytes, the circuit's layout has {self.length:,}{tail}")
        for offset, value in self.runs:
            if view[offset : offset + len(value)] != value:
                got = bytes(view[offset : offset + len(value)])
                first = next(i for i, (a, b) in enumerate(zip(got, value)) if a != b)
                raise LayoutError(f"{what}: byte {offset + first} differs from the circuit's layout{tail}")

    # ---------------------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """A compact, versioned serialization (public data: it can be cached on disk)."""
        parts = [_TEMPLATE_HEAD.pack(_TEMPLATE_MAGIC, _VERSION, self.length, len(self.runs))]
        parts += [_RUN.pack(offset, len(value)) for offset, value in self.runs]
        parts += [value for _, value in self.runs]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> StructureTemplate:
        """Read :meth:`to_bytes`'s output, checking every size before use."""
        view = _as_bytes(data, "a structure template")
        if len(view) < _TEMPLATE_HEAD.size:
            raise LayoutError("not a veilml structure template: too short")
        magic, version, length, count = _TEMPLATE_HEAD.unpack_from(view)
        if magic != _TEMPLATE_MAGIC:
            raise LayoutError("not a veilml structure template (bad magic); learn it again with learn_template")
        if version != _VERSION:
            raise LayoutError(f"structure template version {version} is not supported (this veilml reads {_VERSION})")
        table_end = _TEMPLATE_HEAD.size + count * _RUN.size
        if table_end > len(view):
            raise LayoutError("truncated structure template: its run table is cut short")
        sizes = [_RUN.unpack_from(view, _TEMPLATE_HEAD.size + i * _RUN.size) for i in range(count)]
        if table_end + sum(size for _, size in sizes) != len(view):
            raise LayoutError("malformed structure template: its runs do not add up to its size")
        runs, position = [], table_end
        for offset, size in sizes:
            runs.append((offset, bytes(view[position : position + size])))
            position += size
        return cls(length, tuple(runs))


def learn_template(samples: Sequence[bytes], *, word: int = WORD) -> StructureTemplate:
    """The layout shared by ``samples``: their common length and the ``word``-byte words equal in all.

    The samples must be made with independent randomness (different key sets, different
    encryptions), at least two, all the same length. Identical samples make a template that
    accepts exactly those bytes (data without randomness, like the empty key set of a leveled circuit).
    """
    if len(samples) < 2:
        raise ValueError("learn_template needs at least two samples made with different keys or randomness")
    if word < 1:
        raise ValueError(f"word must be a positive number of bytes, got {word}")
    views = [_as_bytes(s, "a sample") for s in samples]
    lengths = sorted({len(v) for v in views})
    if len(lengths) != 1:
        raise LayoutError(f"the samples have different lengths {lengths}: this data has no fixed layout")
    (length,) = lengths
    stacked = np.stack([np.frombuffer(v, dtype=np.uint8) for v in views])
    same = np.all(stacked == stacked[0], axis=0)
    if same.all():  # data with no randomness at all (a leveled circuit's evaluation keys hold no key): all of it is fixed
        return StructureTemplate(length, ((0, bytes(views[0])),) if length else ())
    padded = np.ones(-(-length // word) * word, dtype=bool)
    padded[:length] = same
    constant = np.repeat(padded.reshape(-1, word).all(axis=1), word)[:length]
    edges = np.diff(np.concatenate([[0], constant.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    first = bytes(views[0])
    return StructureTemplate(length, tuple((int(s), first[s:e]) for s, e in zip(starts, ends)))


@dataclass(frozen=True)
class CircuitLayout:
    """The templates of one circuit's serialized evaluation keys and of each of its encrypted inputs."""

    evaluation_keys: StructureTemplate
    inputs: tuple[StructureTemplate, ...]

    def to_bytes(self) -> bytes:
        templates = [self.evaluation_keys, *self.inputs]
        blobs = [t.to_bytes() for t in templates]
        return b"".join([_LAYOUT_HEAD.pack(_LAYOUT_MAGIC, _VERSION, len(blobs))] + [struct.pack(">Q", len(b)) + b for b in blobs])

    @classmethod
    def from_bytes(cls, data: bytes) -> CircuitLayout:
        view = _as_bytes(data, "a circuit layout")
        if len(view) < _LAYOUT_HEAD.size:
            raise LayoutError("not a veilml circuit layout: too short")
        magic, version, count = _LAYOUT_HEAD.unpack_from(view)
        if magic != _LAYOUT_MAGIC:
            raise LayoutError("not a veilml circuit layout (bad magic); learn it again with learn_circuit_layout")
        if version != _VERSION:
            raise LayoutError(f"circuit layout version {version} is not supported (this veilml reads {_VERSION})")
        if count < 1:
            raise LayoutError("malformed circuit layout: it holds no evaluation-key template")
        templates, position = [], _LAYOUT_HEAD.size
        for _ in range(count):
            if position + 8 > len(view):
                raise LayoutError("truncated circuit layout")
            (size,) = struct.unpack_from(">Q", view, position)
            position += 8
            if position + size > len(view):
                raise LayoutError("truncated circuit layout")
            templates.append(StructureTemplate.from_bytes(view[position : position + size]))
            position += size
        if position != len(view):
            raise LayoutError("malformed circuit layout: trailing bytes")
        return cls(templates[0], tuple(templates[1:]))


def _input_samples(client_specs: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two different valid clear values (shape and range from the public specs) for each input."""
    program = json.loads(client_specs.serialize())
    circuits = program.get("circuits", [])
    if len(circuits) != 1:
        raise ValueError(f"learn_circuit_layout handles single-function circuits, this one has {len(circuits)}")
    samples = []
    for position, entry in enumerate(circuits[0].get("inputs", [])):
        lwe = entry.get("typeInfo", {}).get("lweCiphertext")
        if lwe is None:
            raise ValueError(f"input {position} of this circuit is not encrypted: learn_circuit_layout handles encrypted inputs")
        shape = tuple(int(d) for d in lwe["abstractShape"]["dimensions"])
        integer = lwe["encoding"]["integer"]
        other = -1 if integer.get("isSigned") else 1
        samples.append((np.zeros(shape, dtype=np.int64), np.full(shape, other, dtype=np.int64)))
    return samples


def learn_circuit_layout(client_specs: Any) -> CircuitLayout:
    """The layout of a circuit's evaluation keys and inputs, from two throw-away key sets.

    ``client_specs`` is concrete's (public) ``ClientSpecs`` or its serialization. The key sets
    and their clients are local to this function and dropped before it returns (about two key
    generations of time); what it returns holds no key.
    """
    from concrete import fhe

    specs = client_specs if not isinstance(client_specs, (bytes, bytearray)) else fhe.ClientSpecs.deserialize(bytes(client_specs))
    values = _input_samples(specs)
    key_samples: list[bytes] = []
    input_samples: list[list[bytes]] = [[] for _ in values]
    for round_ in range(2):
        client = fhe.Client(specs)  # no key cache: nothing is written to disk
        client.keygen(force=True)  # concrete draws fresh secret and encryption seeds
        key_samples.append(client.evaluation_keys.serialize())
        encrypted = client.encrypt(*(np.ascontiguousarray(v[round_]) for v in values))
        encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
        for samples, value in zip(input_samples, encrypted):
            samples.append(value.serialize())
        del client, encrypted  # the throw-away keys go with their client
    return CircuitLayout(learn_template(key_samples), tuple(learn_template(s) for s in input_samples))
