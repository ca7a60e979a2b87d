"""The batched path of a deployed model: the server bundle's ``batch.json``, loaded once per process and answered.

A tree estimator's :meth:`save` writes its slot programs (one per encoding, and their public description) into
``server/batch.json``, listed and hashed in the server manifest like every other file (so signed with it). A
bundle saved before it has none: :func:`read_batch_server` returns None and the batched path is refused with a
message naming the fix (save the model again). ``veilml serve`` answers ``GET /batch`` (the description) and
``POST /batch/predict`` (one batch: the client's public keys and ciphertexts; see
:mod:`veilml.runtime.batch.halves`); a Dask worker runs :func:`answer_batch` (:mod:`.dask`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from veilml.errors import VeilmlError

__all__ = ["BATCH_FILE", "NoBatchPathError", "answer_batch", "batch_description", "loaded_batch_server", "read_batch_server"]

BATCH_FILE = "batch.json"
#: the largest ``batch.json`` read (a 20-tree ensemble's is some 100 KiB)
MAX_BATCH_FILE_BYTES = 256 * 2**20


class NoBatchPathError(VeilmlError, ValueError):
    """The bundle has no batched programs (saved before veilml wrote them, or a model the batched path cannot run)."""


def read_batch_server(server_dir: Path) -> Any:
    """The :class:`~veilml.runtime.batch.halves.BatchModelServer` of a server bundle side whose manifest was checked,
    or None if it has no ``batch.json``."""
    from veilml.runtime.batch.halves import BatchModelServer
    from veilml.runtime.manifest import ArtifactError, read_artifact_file

    path = Path(server_dir) / BATCH_FILE
    if not path.exists():
        return None
    try:
        return BatchModelServer.from_json(read_artifact_file(path, MAX_BATCH_FILE_BYTES, "batched programs"))
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ArtifactError(f"{path} holds no valid batched programs ({error}); save the model again") from None


_LOADED: dict[tuple[str, Any], Any] = {}
_LOCK = threading.Lock()


def loaded_batch_server(bundle: str | os.PathLike, trusted_key: Any = None) -> Any:
    """The batched server of ``bundle`` (or its ``server/``), its manifest checked, loaded once per process and kept
    (a ``veilml serve`` child's, a Dask worker's); raises :class:`NoBatchPathError` when it has none."""
    from veilml.runtime.manifest import check_manifest
    from veilml.serving.bundle import SERVER_FORMAT, bundle_side

    directory = bundle_side(bundle, "server").resolve()
    key = (str(directory), trusted_key if isinstance(trusted_key, (str, bytes, type(None))) else id(trusted_key))
    with _LOCK:
        if key not in _LOADED:
            check_manifest(directory, SERVER_FORMAT, trusted_key=trusted_key)
            _LOADED[key] = read_batch_server(directory)
        server = _LOADED[key]
    if server is None:
        raise NoBatchPathError(
            f"the bundle {directory.parent} has no batched path ({BATCH_FILE}): it was saved by an earlier veilml; save the "
            "model again to score whole tables, or use the TFHE path"
        )
    return server


def batch_description(bundle: str | os.PathLike, trusted_key: Any = None) -> dict[str, Any]:
    """The public description of a bundle's batched model (what ``GET /batch`` answers)."""
    return loaded_batch_server(bundle, trusted_key).description.to_dict()


def answer_batch(bundle: str, body: bytes, max_bytes: int, trusted_key: Any = None) -> bytes:
    """The packed outputs of one packed batched request (checked: :meth:`BatchModelServer.check`)."""
    return loaded_batch_server(bundle, trusted_key).answer_bytes(body, max_bytes)
