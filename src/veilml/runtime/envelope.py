"""Self-describing envelopes for the bytes that cross a process boundary.

Every evaluation key set, ciphertext and encrypted result that leaves :class:`~veilml.runtime.FHEClient`
or :class:`~veilml.runtime.FHEServer` is wrapped so that the receiver can tell, before any byte
reaches concrete's native code, what it is, which model it belongs to and which key set it goes with.

Layout (all integers big-endian)::

    offset  size  field
    0       8     magic  b"veilmlEV"
    8       2     format version (1)
    10      2     header length H (at most MAX_HEADER_BYTES)
    12      H     header: UTF-8 JSON object with exactly these keys
                    "kind"           "evaluation-keys" | "ciphertext" | "result"
                    "fingerprint"    sha256 (hex) of the circuit's client specs: the model
                    "key_id"         sha256 (hex) of the concrete evaluation-key bytes: the key set
                    "payload_bytes"  length of the payload
    12 + H  ...   payload: concrete's serialization (exactly payload_bytes bytes)

The client specs and the evaluation keys are public, so both identifiers are too; they identify,
they do not authenticate (anyone can write any header). They turn mix-ups — another model's keys,
another client's ciphertext — into clear errors, and the server still checks that the keys hash to
their ``key_id`` and that payloads have the circuit's layout (:mod:`veilml.runtime.validation`).

Lists of byte strings have one framing in veilml, the *batch* (:func:`pack_batch`; read by
:func:`unpack_batch` within a count and a size): the rows of a tree model's ciphertext and result
batches (one envelope a row), and the frames of an encrypted linear layer's messages
(:func:`veilml.linear.base.pack_frames`). Big-endian as well::

    0       8     magic  b"veilmlBT"
    8       2     format version (1)
    10      4     number of items N
    14      ...   N times: the item's length (8 bytes), then its bytes
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "BATCH_MAGIC",
    "DEFAULT_MAX_BYTES",
    "KINDS",
    "Envelope",
    "EnvelopeError",
    "KeyMismatchError",
    "ModelMismatchError",
    "check_key_id",
    "check_model",
    "batch_bytes",
    "key_id",
    "pack_batch",
    "pack_envelope",
    "short",
    "specs_fingerprint",
    "unpack_batch",
    "unpack_envelope",
]

MAGIC = b"veilmlEV"
VERSION = 1
KINDS = ("evaluation-keys", "ciphertext", "result")
MAX_HEADER_BYTES = 1024
DEFAULT_MAX_BYTES = 2**31  # the largest envelope unpack_envelope reads unless told otherwise
_PREFIX = struct.Struct(">8sHH")
_FIELDS = {"kind", "fingerprint", "key_id", "payload_bytes"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAMES = {"evaluation-keys": "evaluation keys", "ciphertext": "ciphertext", "result": "result"}


class EnvelopeError(VeilmlError, ValueError):
    """Bytes are not a well-formed veilml envelope of the expected kind."""


class KeyMismatchError(EnvelopeError):
    """Keys, ciphertexts or results that belong to different key sets (or models) were combined."""


class ModelMismatchError(KeyMismatchError):
    """Keys, ciphertexts or results made for another model (another circuit)."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    fingerprint: str
    key_id: str
    payload: bytes


def short(identifier: str) -> str:
    """The first 12 hex digits of an identifier, for messages."""
    return identifier[:12] + "…"


def specs_fingerprint(client_specs: Any) -> str:
    """sha256 (hex) of a circuit's client specs (public), canonicalized so that it does not depend on
    how the specs were obtained (compiled, or deserialized from bytes)."""
    raw = client_specs if isinstance(client_specs, (bytes, bytearray, str)) else client_specs.serialize()
    canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_id(evaluation_keys: bytes) -> str:
    """sha256 (hex) of concrete's serialized evaluation keys: it names one client's key set."""
    return hashlib.sha256(evaluation_keys).hexdigest()


def pack_envelope(kind: str, payload: bytes, *, fingerprint: str, key_id: str) -> bytes:
    """Wrap ``payload`` (concrete's bytes) in an envelope of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, value in (("fingerprint", fingerprint), ("key_id", key_id)):
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise ValueError(f"{name} must be 64 lowercase hex digits (a sha256), got {value!r}")
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    header = json.dumps(
        {"kind": kind, "fingerprint": fingerprint, "key_id": key_id, "payload_bytes": len(payload)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + bytes(payload)


def unpack_envelope(data: bytes, kind: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Validate an envelope of ``kind`` (magic, version, header size and fields, lengths) and return it.

    Raises :class:`EnvelopeError` (a ``ValueError``) naming the problem; nothing is deserialized
    by concrete here.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = _NAMES[kind]
    data = _bounded_bytes(data, name, max_bytes, " (max_bytes); raise max_bytes if this circuit's data is really that large")
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise EnvelopeError(
            f"{name}: not a veilml envelope (no '{MAGIC.decode()}' magic); pass the bytes made by "
            "veilml's FHEClient / FHEServer, not concrete's raw serialization"
        )
    _, version, header_size = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise EnvelopeError(
            f"{name}: envelope format version {version} is not supported (this veilml reads {VERSION}); "
            "use the same veilml version on both sides"
        )
    if header_size > MAX_HEADER_BYTES:
        raise EnvelopeError(f"{name}: envelope header of {header_size} bytes, the limit is {MAX_HEADER_BYTES}")
    if _PREFIX.size + header_size > len(data):
        raise EnvelopeError(f"{name}: truncated envelope (its header is cut short)")
    try:
        header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + header_size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeError(f"{name}: the envelope header is not valid JSON ({error})") from None
    if not isinstance(header, dict) or set(header) != _FIELDS:
        found = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise EnvelopeError(f"{name}: the envelope header must have the fields {sorted(_FIELDS)}, got {found}")
    if header["kind"] != kind:
        got = header["kind"]
        raise EnvelopeError(
            f"expected {name}, got an envelope of kind {got!r}" + ("; were the arguments swapped?" if got in KINDS else "")
        )
    for field in ("fingerprint", "key_id"):
        if not isinstance(header[field], str) or not _HEX64.fullmatch(header[field]):
            raise EnvelopeError(f"{name}: the envelope's {field} is not a sha256 in hex")
    size = header["payload_bytes"]
    offset = _PREFIX.size + header_size
    if type(size) is not int or size != len(data) - offset:
        raise EnvelopeError(
            f"{name}: the envelope announces a payload of {size!r} bytes and carries {len(data) - offset:,}: "
            "it was truncated or modified in transit"
        )
    return Envelope(kind, header["fingerprint"], header["key_id"], bytes(data[offset:]))


_MODEL_MESSAGES = {
    ("evaluation-keys", "server"): "these evaluation keys were made for another model (fingerprint {got}, this "
    "server runs {want}); generate keys with this model's client",
    ("ciphertext", "server"): "this ciphertext was encrypted for another model (fingerprint {got}, this server "
    "runs {want}); encrypt with this model's client",
    ("result", "client"): "this result was computed by another model (fingerprint {got}, this client's model "
    "is {want}); it is refused without decrypting. Send the ciphertexts to a server running this model",
}


def check_model(envelope: Envelope, fingerprint: str, side: str = "server") -> None:
    """Raise :class:`ModelMismatchError` unless ``envelope`` was made for the model ``fingerprint``."""
    if envelope.fingerprint != fingerprint:
        template = _MODEL_MESSAGES.get(
            (envelope.kind, side),
            f"this {_NAMES[envelope.kind]} belongs to another model (fingerprint {{got}}, expected {{want}})",
        )
        raise ModelMismatchError(template.format(got=short(envelope.fingerprint), want=short(fingerprint)))


def check_key_id(envelope: Envelope, expected: str) -> None:
    """Raise :class:`KeyMismatchError` unless ``envelope`` goes with the key set ``expected``.

    For an evaluation-key envelope, ``expected`` is :func:`key_id` of its own payload.
    """
    if envelope.key_id == expected:
        return
    got, want = short(envelope.key_id), short(expected)
    if envelope.kind == "ciphertext":
        message = (
            f"this ciphertext was encrypted under other keys (key id {got}) than the evaluation keys given "
            f"(key id {want}); send the evaluation keys of the client that encrypted it"
        )
    elif envelope.kind == "result":
        message = (
            f"this result was computed under other evaluation keys (key id {got}) than this client's "
            f"(key id {want}); it is refused without decrypting. Send this client's evaluation keys with "
            "its ciphertexts"
        )
    else:  # evaluation keys are checked against the hash of their own content
        message = (
            f"these evaluation keys do not hash to their key id ({got}, content {want}): they were modified or "
            "corrupted in transit; send them again from the client"
        )
    raise KeyMismatchError(message)


def _bounded_bytes(data: Any, what: str, max_bytes: int, advice: str) -> bytes:
    """``data`` as bytes, once it is bytes of at most ``max_bytes`` (``advice`` ends the message beyond)."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise EnvelopeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise EnvelopeError(f"{what}: {len(data):,} bytes, more than the limit of {max_bytes:,} bytes{advice}")
    return data


# ----------------------------------------------------------------------------------- batches
# The one framing of a list of byte strings in veilml: the rows of a tree model's ciphertext and result
# batches, and the frames of an encrypted linear layer's messages (:func:`veilml.linear.base.pack_frames`).
BATCH_MAGIC = b"veilmlBT"
_BATCH_PREFIX = struct.Struct(">8sHI")  # magic, format version, number of items
_ITEM = struct.Struct(">Q")  # length of each item


def batch_bytes(items: int, item_bytes: int) -> int:
    """The size of a batch of ``items`` items of ``item_bytes`` bytes each: the largest when items are at most that."""
    return _BATCH_PREFIX.size + items * (_ITEM.size + item_bytes)


def pack_batch(items: Sequence[bytes]) -> bytes:
    """Byte strings (a row's envelope each, or a message's frames) as one: a count, then each length and its bytes."""
    parts = [_BATCH_PREFIX.pack(BATCH_MAGIC, VERSION, len(items))]
    for item in items:
        parts += [_ITEM.pack(len(item)), bytes(item)]
    return b"".join(parts)


def unpack_batch(
    data: bytes,
    *,
    max_items: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    what: str = "batch",
    item: str = "row",
    allow_empty: bool = False,
) -> list[bytes]:
    """The items of a batch made by :func:`pack_batch`, after checking its framing and limits.

    Raises :class:`EnvelopeError` (a ``ValueError``) naming the problem: not a batch, another version,
    more than ``max_items`` items or ``max_bytes`` bytes, no item (unless ``allow_empty``), lengths that
    do not add up. ``what`` and ``item`` name the batch and its items in messages. Each envelope in it
    is still to be checked with :func:`unpack_envelope`; nothing here is deserialized.
    """
    data = _bounded_bytes(data, what, max_bytes, f"; send fewer {item}s per request")
    if len(data) < _BATCH_PREFIX.size:
        raise EnvelopeError(
            f"{what}: truncated ({len(data)} bytes): not a veilml batch, whose prefix alone is {_BATCH_PREFIX.size}"
        )
    if data[:8] != BATCH_MAGIC:
        raise EnvelopeError(
            f"{what}: not a veilml batch (no '{BATCH_MAGIC.decode()}' magic); pass the bytes of a veilml client's encrypt()"
        )
    _, version, count = _BATCH_PREFIX.unpack_from(data)
    if version != VERSION:
        raise EnvelopeError(f"{what}: batch format version {version} is not supported (this veilml reads {VERSION})")
    if count == 0 and not allow_empty:
        raise EnvelopeError(f"{what}: no {item}s")
    if count > max_items:
        raise EnvelopeError(f"{what}: {count} {item}s, more than the limit of {max_items} per request; split the batch")
    if count * _ITEM.size > len(data) - _BATCH_PREFIX.size:
        raise EnvelopeError(f"{what}: truncated (it announces {count} {item}s, more than its {len(data):,} bytes can hold)")
    items, offset = [], _BATCH_PREFIX.size
    for _ in range(count):
        if offset + _ITEM.size > len(data):
            raise EnvelopeError(f"{what}: truncated (it announces {count} {item}s)")
        (size,) = _ITEM.unpack_from(data, offset)
        offset += _ITEM.size
        if size > len(data) - offset:
            raise EnvelopeError(f"{what}: truncated (a {item} announces {size:,} bytes, {len(data) - offset:,} are left)")
        items.append(bytes(data[offset : offset + size]))
        offset += size
    if offset != len(data):
        raise EnvelopeError(f"{what}: {len(data) - offset:,} trailing bytes after {count} {item}s: modified in transit")
    return items
