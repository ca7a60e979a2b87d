"""The one store of what clients leave on a service: key sets (``veilml serve``) and sessions (``veilml worker``).

An *entry* (a registered key set, an open session) holds *items* (evaluation-key bytes) and belongs to
the client that made it, its *owner*. Using it takes a secret: the store hands one out with each grant
and keeps only its sha256. The rules, each from an attack on the landed services:

- **Quotas per client.** Entries and item bytes count against their owner: at most
  ``max_key_sets_per_client`` entries and ``max_key_bytes_per_client`` bytes each. A client over its
  quota loses its *own* least recently used entries first, so a flood of forged key sets evicts the
  flooder's keys, not other clients'. Over the global bounds, the least recently used entry of the
  client holding the most bytes goes. Nothing fills the disk and then refuses everyone (found: 3,368
  forged key sets filled the 64 GiB default, then every new client got 507).
- **Owners cannot be locked out.** The owner's grant is never dropped. Other clients may register
  the same (public) keys and get grants of their own, at most ``MAX_GRANTS - 1`` of them, the oldest
  going first (found: 16 re-posts of someone's public keys evicted the owner's secret for good).
- **Corrupted entries repair themselves.** Items are stored with their sha256 and checked when read;
  an entry whose files do not check out is dropped and reads as unknown (the client registers again,
  which writes it anew) instead of failing with 500.

With a ``directory`` entries live on disk (``<id>.json`` and ``<id>.<item>``, mode 0600) and survive a
restart; without one they live in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from veilml.runtime.private_files import write_private_file as write_private
from veilml.serving.limits import ServiceError, ServiceLimits

__all__ = ["MAX_GRANTS", "Entry", "OwnedStore"]

logger = logging.getLogger("veilml.serving.store")

#: grants (secrets) kept per entry: the owner's and the latest ``MAX_GRANTS - 1`` of other clients
MAX_GRANTS = 16
_ITEM_NAME = re.compile(r"[a-z0-9_-]{1,32}")  # item names of an on-disk store (they become file names)
_MAX_META_BYTES = 64 * 1024


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(eq=False)
class Entry:
    """One key set or session: its owner, the digests of its secrets (the owner's first) and its items."""

    owner: str
    grants: list[str] = field(default_factory=list)
    items: dict[str, bytes | str] = field(default_factory=dict)  # bytes in memory; their sha256 (hex) on disk
    sizes: dict[str, int] = field(default_factory=dict)
    used: int = 0  # a logical clock: higher is more recent

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


class OwnedStore:
    """Entries that belong to the clients that made them (see the module docstring).

    Args:
        limits: the service's limits (``max_key_bytes``, ``max_key_sets`` and their per-client twins).
        id_pattern: what an entry id looks like (checked before it is used in a path).
        noun: what an entry is, for messages (``"key id"``, ``"session"``).
        unknown_code: the error code of an unknown or evicted entry (clients register again on it).
        error: the exception type raised (a :class:`~veilml.serving.limits.ServiceError`).
        directory: where entries live across restarts (created 0700); None keeps them in memory.
    """

    def __init__(
        self,
        limits: ServiceLimits,
        *,
        id_pattern: str,
        noun: str,
        unknown_code: str,
        error: Callable[[int, str, str | None], ServiceError] = ServiceError,
        directory: str | os.PathLike | None = None,
    ) -> None:
        self.limits = limits
        self._id = re.compile(id_pattern)
        self.noun, self.unknown_code, self._error = noun, unknown_code, error
        self.directory = None if directory is None else Path(directory)
        self._entries: dict[str, Entry] = {}
        self._clock = 0
        self._lock = threading.RLock()
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            self._load_index()

    # ------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._entries

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.bytes for entry in self._entries.values())

    def usage(self, client: str) -> tuple[int, int]:
        """(entries, bytes) that ``client`` owns."""
        with self._lock:
            owned = [e for e in self._entries.values() if e.owner == client]
            return len(owned), sum(e.bytes for e in owned)

    def check_id(self, entry_id: str) -> str:
        if not isinstance(entry_id, str) or not self._id.fullmatch(entry_id):
            raise self._error(400, f"malformed {self.noun}: {self._id.pattern} expected; use the one the server returned", None)
        return entry_id

    def authorize(self, entry_id: str, secret: str | None) -> None:
        """Raise unless ``entry_id`` is here and ``secret`` is one of its secrets (401 unknown or no secret, 403 wrong)."""
        self.check_id(entry_id)
        with self._lock:
            entry = self._entries.get(entry_id)
            grants = [] if entry is None else list(entry.grants)
        if entry is None:
            raise self._unknown(entry_id)
        if not secret:
            raise self._error(401, f"this request needs the secret returned when the {self.noun} was registered", "no-secret")
        digest = _digest(secret)
        if not any(hmac.compare_digest(digest, known) for known in grants):  # every grant compared: no early exit
            raise self._error(
                403,
                f"wrong secret for this {self.noun}: it belongs to another client; use the secret the server returned to you",
                "forbidden",
            )
        self.touch(entry_id)

    def get(self, entry_id: str, item: str) -> bytes | None:
        """The bytes of ``item`` (None if the entry has no such item); unknown entries raise."""
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                raise self._unknown(entry_id)
            stored = entry.items.get(item)
        if stored is None or isinstance(stored, bytes):
            return stored
        data = read_item(self.directory, entry_id, item, stored)
        if data is None:
            logger.warning("dropping %s %s...: its stored %s does not match its hash", self.noun, entry_id[:12], item)
            self.drop(entry_id)
            raise self._unknown(entry_id)
        return data

    def digest(self, entry_id: str, item: str) -> str | None:
        """The sha256 (hex) an on-disk item must hash to when read (None in memory, or no such item)."""
        with self._lock:
            entry = self._entries.get(entry_id)
            stored = None if entry is None else entry.items.get(item)
            return stored if isinstance(stored, str) else None

    def items(self, entry_id: str) -> dict[str, int]:
        """Item name -> size of an entry (empty for an unknown one)."""
        with self._lock:
            entry = self._entries.get(entry_id)
            return {} if entry is None else dict(entry.sizes)

    # ------------------------------------------------------------------------------ writing
    def open(self, client: str, entry_id: str | None = None) -> tuple[str, str]:
        """A grant on ``entry_id`` for ``client`` (made, and owned by ``client``, if new; a fresh random id if
        None): ``(entry id, secret)``. The owner's grant is never dropped."""
        entry_id = secrets.token_hex(16) if entry_id is None else self.check_id(entry_id)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                self._make_room(client, 0, new_entry=True, keep=entry_id)
                entry = self._entries[entry_id] = Entry(client)
            entry.grants.append(_digest(secret))
            if len(entry.grants) > MAX_GRANTS:
                del entry.grants[1]  # the oldest grant of another client; [0] is the owner's
            self._stamp(entry)
            self._save_meta(entry_id, entry)
        return entry_id, secret

    def put(self, entry_id: str, item: str, data: bytes) -> None:
        """Store ``item`` of an entry (replacing it), within its owner's quota and the global bounds."""
        if self.directory is not None and not _ITEM_NAME.fullmatch(item):
            raise ValueError(f"item names of an on-disk store match {_ITEM_NAME.pattern}, got {item!r}")
        self._check_size(len(data))
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                raise self._unknown(entry_id)
            extra = len(data) - entry.sizes.get(item, 0)
            self._make_room(entry.owner, extra, new_entry=False, keep=entry_id, item=item)
            if self.directory is None:
                entry.items[item] = bytes(data)
            else:
                write_private(self.directory / f"{entry_id}.{item}", data)
                entry.items[item] = hashlib.sha256(data).hexdigest()
            entry.sizes[item] = len(data)
            self._stamp(entry)
            self._save_meta(entry_id, entry)

    def touch(self, entry_id: str) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is not None:
                self._stamp(entry)

    def drop(self, entry_id: str) -> None:
        """Forget an entry and its items."""
        with self._lock:
            entry = self._entries.pop(entry_id, None)
            if self.directory is not None:
                for name in [*(entry.items if entry else ()), "json"]:
                    (self.directory / f"{entry_id}.{name}").unlink(missing_ok=True)

    def drop_item(self, entry_id: str, item: str) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None or item not in entry.items:
                return
            del entry.items[item], entry.sizes[item]
            if self.directory is not None:
                (self.directory / f"{entry_id}.{item}").unlink(missing_ok=True)
                self._save_meta(entry_id, entry)

    # ------------------------------------------------------------------------------ internals
    def _unknown(self, entry_id: str) -> ServiceError:
        return self._error(
            401,
            f"unknown {self.noun} {entry_id[:12]}...: the server restarted without it, evicted it or never had it; "
            "register again",
            self.unknown_code,
        )

    def _stamp(self, entry: Entry) -> None:
        self._clock += 1
        entry.used = self._clock

    def _make_room(self, client: str, extra: int, *, new_entry: bool, keep: str, item: str | None = None) -> None:
        """Evict until ``client`` may add ``extra`` bytes (and one entry if ``new_entry``); called with the lock held."""
        self._check_size(extra)

        def over(owned: list[tuple[str, Entry]], count_limit: int, byte_limit: int) -> tuple[bool, bool]:
            count = len(owned) + (1 if new_entry else 0)
            return count > count_limit, sum(e.bytes for _, e in owned) + extra > byte_limit

        def victims(owned: list[tuple[str, Entry]], by_bytes: bool) -> list[tuple[str, Entry]]:
            # over on bytes: only entries that hold bytes help; over on count: any entry does
            return [(i, e) for i, e in owned if i != keep and (e.bytes > 0 or not by_bytes)]

        limits = self.limits
        while True:
            mine = [(i, e) for i, e in self._entries.items() if e.owner == client]
            count_over, bytes_over = over(mine, limits.max_key_sets_per_client, limits.max_key_bytes_per_client)
            if not (count_over or bytes_over):
                break
            if not self._evict_lru(victims(mine, bytes_over and not count_over)):
                self._trim(keep, item)  # one entry alone is over: drop its other items
                break
        while True:
            count_over, bytes_over = over(list(self._entries.items()), limits.max_key_sets, limits.max_key_bytes)
            if not (count_over or bytes_over):
                break
            totals: dict[str, int] = {}
            for _, e in victims(list(self._entries.items()), bytes_over and not count_over):
                totals[e.owner] = totals.get(e.owner, 0) + e.bytes + 1
            if not totals:
                self._trim(keep, item)
                break
            heaviest = max(totals, key=lambda owner: totals[owner])
            owned = [(i, e) for i, e in self._entries.items() if e.owner == heaviest]
            self._evict_lru(victims(owned, bytes_over and not count_over))

    def _check_size(self, size: int) -> None:
        limits = self.limits
        limit = min(limits.max_key_bytes_per_client, limits.max_key_bytes)
        if size > limit:
            flag = "--max-key-mb" if limits.max_key_bytes <= limits.max_key_bytes_per_client else "--max-key-mb-per-client"
            raise self._error(
                413,
                f"{size} bytes of evaluation keys exceed this server's limit of {limit} bytes; send smaller keys "
                f"or ask the operator to raise {flag}",
                "keys-too-large",
            )

    def _evict_lru(self, candidates: list[tuple[str, Entry]]) -> bool:
        if not candidates:
            return False
        entry_id, entry = min(candidates, key=lambda pair: pair[1].used)
        logger.info("evicting the least recently used %s of a client over its quota or the store's bound", self.noun)
        self.drop(entry_id)
        return True

    def _trim(self, entry_id: str, keep_item: str | None) -> None:
        entry = self._entries.get(entry_id)
        for other in [name for name in (entry.items if entry else ()) if name != keep_item]:
            self.drop_item(entry_id, other)

    # ------------------------------------------------------------------------------ disk
    def _save_meta(self, entry_id: str, entry: Entry) -> None:
        if self.directory is None:
            return
        meta = {"owner": entry.owner, "grants": entry.grants, "items": entry.items, "sizes": entry.sizes}
        write_private(self.directory / f"{entry_id}.json", json.dumps(meta).encode())

    def _load_index(self) -> None:
        assert self.directory is not None
        found = []
        for path in self.directory.glob("*.json"):
            entry_id = path.name[: -len(".json")]
            try:
                entry = _read_meta(path)
                if not self._id.fullmatch(entry_id):
                    raise ValueError("not an entry id")
                found.append((path.stat().st_mtime, entry_id, entry))
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.warning("dropping the unreadable store entry %s (%s)", path.name[:16], type(error).__name__)
                for leftover in self.directory.glob(f"{entry_id}.*"):
                    leftover.unlink(missing_ok=True)
        for _, entry_id, entry in sorted(found, key=lambda found: found[0]):
            self._stamp(entry)
            self._entries[entry_id] = entry


def _read_meta(path: Path) -> Entry:
    if path.is_symlink() or path.stat().st_size > _MAX_META_BYTES:
        raise ValueError("not a store entry")
    meta = json.loads(path.read_text())
    owner, grants, items, sizes = meta["owner"], meta["grants"], meta["items"], meta["sizes"]
    if not isinstance(owner, str) or not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
        raise ValueError("bad owner or grants")
    if not isinstance(items, dict) or set(items) != set(sizes) or not all(_ITEM_NAME.fullmatch(k) for k in items):
        raise ValueError("bad items")
    if not all(isinstance(v, str) for v in items.values()) or not all(type(v) is int for v in sizes.values()):
        raise ValueError("bad item hashes or sizes")
    return Entry(owner, grants[:MAX_GRANTS], dict(items), dict(sizes))


def read_item(directory: Path | None, entry_id: str, item: str, sha256: str) -> bytes | None:
    """The bytes of an on-disk item if they hash to ``sha256``, else None (missing, altered, a link)."""
    if directory is None:
        return None
    path = directory / f"{entry_id}.{item}"
    try:
        if path.is_symlink():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha256) else None
