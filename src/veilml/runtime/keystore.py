"""Evaluation keys registered with a server, kept on disk so that a restart keeps them.

Each key set is stored under its key id (the sha256 of its evaluation keys, so a file's name is a
check of its content) with the sha256 of the secrets handed to the clients that registered it.
Evaluation keys are public; the secrets are bearer tokens that stop a client from running
requests under a key id it only heard of. Only their hashes are written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from pathlib import Path

__all__ = ["KeyStore", "KeyStoreError"]

_KEY_ID = re.compile(r"[0-9a-f]{64}")
#: secrets kept per key set: each POST /keys of the same keys adds one
MAX_SECRETS = 16


class KeyStoreError(Exception):
    """A key id that is unknown (``status`` 401) or whose secret is wrong (403), or a full store (507)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Key sets under ``directory``: ``<key id>.keys`` (the envelope) and ``<key id>.json`` (secret hashes).

    Args:
        directory: where the key sets live (created with mode 0700).
        max_bytes: the most bytes of evaluation keys kept on disk; registering more is refused.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 64 * 2**30) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise KeyStoreError(400, "a key id is 64 lowercase hex digits (the key_id returned by POST /keys)", "bad-key-id")
        return self.directory / f"{key_id}.keys", self.directory / f"{key_id}.json"

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*.keys"))

    def add(self, key_id: str, envelope: bytes) -> str:
        """Store ``envelope`` (already checked by the server) under ``key_id``; a new secret for its caller."""
        keys_path, meta_path = self._paths(key_id)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"secrets": []}
            if not keys_path.exists():
                if self.used_bytes() + len(envelope) > self.max_bytes:
                    raise KeyStoreError(
                        507,
                        f"the key store is full ({self.max_bytes:,} bytes); ask the operator to raise --max-key-store-mb",
                        "key-store-full",
                    )
                _write_atomic(keys_path, envelope)
            meta["secrets"] = [*meta["secrets"], _digest(secret)][-MAX_SECRETS:]  # the oldest secret goes first
            _write_atomic(meta_path, json.dumps(meta).encode())
        return secret

    def check(self, key_id: str, secret: str | None) -> None:
        """Raise :class:`KeyStoreError` unless ``key_id`` is stored and ``secret`` is one of its secrets."""
        _, meta_path = self._paths(key_id)
        if not meta_path.exists():
            raise KeyStoreError(
                401, f"unknown key id {key_id[:12]}...: register the evaluation keys with POST /keys first", "unknown-key"
            )
        if not secret:
            raise KeyStoreError(
                401, "this request needs the key secret returned by POST /keys (header X-Veilml-Key-Secret)", "no-secret"
            )
        digest = _digest(secret)
        known = json.loads(meta_path.read_text())["secrets"]
        if not any(hmac.compare_digest(digest, d) for d in known):
            raise KeyStoreError(
                403,
                f"wrong secret for key id {key_id[:12]}...: use the secret returned when you registered these keys",
                "forbidden",
            )

    def get(self, key_id: str) -> bytes:
        """The stored evaluation-key envelope of ``key_id``."""
        keys_path, _ = self._paths(key_id)
        try:
            data = keys_path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(
                401, f"unknown key id {key_id[:12]}...: register the evaluation keys with POST /keys first", "unknown-key"
            ) from None
        return data


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
