"""The ``glwe`` backend's evaluation key: the message a client sends, and the server's cache of deserialized keys.

The only evaluation key is the *compression key* (~128 MiB). It travels behind a header naming the
crypto parameters it was made for, so that a key for other parameters is refused before the
extension deserializes it. Deserialized keys are kept per process, shared by every server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from veilml.linear.base import pack_frames, unpack_frames
from veilml.linear.glwe.extension import call_fhext, load_fhext
from veilml.linear.glwe.wire import MALFORMED, params_digest

__all__ = ["COMPRESSION_KEYS", "KEY_FORMAT", "key_message", "read_key_message"]

KEY_FORMAT = "veilml-glwe-key/1"


def key_message(params: Mapping[str, Any], compression_key: bytes) -> bytes:
    """The evaluation key as sent: a header naming the parameters it was made for, then the key."""
    header = json.dumps({"format": KEY_FORMAT, "params": params_digest(params), "bytes": len(compression_key)})
    return pack_frames([header.encode(), compression_key])


def read_key_message(data: bytes, params: Mapping[str, Any]) -> bytes:
    """The compression key of a key message, once its header matches these parameters."""
    frames = unpack_frames(data)
    try:
        header = json.loads(frames[0].decode()) if len(frames) == 2 else {}
        fmt, digest, size = header.get("format"), header.get("params"), int(header.get("bytes", -1))
    except MALFORMED as error:
        raise ValueError(f"expected a {KEY_FORMAT} message ({error})") from None
    if fmt != KEY_FORMAT:
        raise ValueError(f"expected a {KEY_FORMAT} message (a header frame and the key); send GLWESession's keys")
    if digest != params_digest(params):
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
        """The deserialized key of a key message (see :func:`key_message`) for ``params``."""
        digest = params_digest(params)
        with self._lock:
            for i, (made_for, raw, key) in enumerate(self._entries):
                if made_for == digest and (raw is data or (len(raw) == len(data) and raw == data)):
                    self._entries.insert(0, self._entries.pop(i))
                    return key
        if not data:
            raise ValueError("no GLWE compression key: register this session's key first")
        compression_key = read_key_message(data, params)
        key = call_fhext("deserialize the compression key", load_fhext().deserialize_compression_key, compression_key)
        with self._lock:
            self._entries.insert(0, (digest, data, key))
            del self._entries[self._size :]
        return key


COMPRESSION_KEYS = _CompressionKeyCache()
