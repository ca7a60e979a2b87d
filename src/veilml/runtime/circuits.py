"""Compiled circuits kept on disk, keyed by what determines them, so that a restart does not compile again.

An entry is a directory named by the sha256 of (the graph's content hash, the compilation
configuration, the veilml and concrete versions). It holds concrete's compiled server
(``server.zip``), the public client specs, the layout of the circuit's keys and inputs
(:mod:`veilml.runtime.validation`) and a ``manifest.json`` with the sha256 of each file. An entry
whose files do not match their manifest is compiled again, never loaded. Entries are written to a
temporary directory and renamed into place, so a reader never sees half an entry.

Nothing secret is cached: the server needs no key, and the layout is learned from throw-away keys
that are never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compiler import Configuration, Graph, compile_graph
from ..compiler.serialize import graph_hash
from .envelope import specs_fingerprint
from .manifest import sha256_file
from .manifest import versions as _versions
from .validation import CircuitLayout, learn_circuit_layout

__all__ = ["CachedCircuit", "CircuitCache", "default_cache_dir"]

logger = logging.getLogger("veilml.circuits")

FORMAT = "veilml-circuit-cache/1"
_FILES = ("server.zip", "client.specs.json", "layout.bin")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/veilml/circuits``, or ``~/.cache/veilml/circuits``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "veilml" / "circuits"


@dataclass(frozen=True)
class CachedCircuit:
    """A compiled circuit on disk and its public description."""

    directory: Path
    client_specs: bytes
    layout: CircuitLayout
    fingerprint: str  # sha256 of the client specs (see envelope.specs_fingerprint)

    @property
    def server_path(self) -> Path:
        return self.directory / "server.zip"


class CircuitCache:
    """Compiled circuits under ``directory`` (default :func:`default_cache_dir`)."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def key(self, graph: Graph, configuration: Configuration) -> str:
        identity = {"format": FORMAT, "graph": graph_hash(graph), "configuration": repr(configuration), **_versions()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def get(self, graph: Graph, inputset: Sequence[np.ndarray], configuration: Configuration) -> CachedCircuit:
        """The cached circuit of ``graph``, compiled (and cached) first if there is no valid entry."""
        key = self.key(graph, configuration)
        entry = self.directory / key
        cached = self._load(entry)
        if cached is not None:
            return cached
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.directory))
        try:
            circuit = compile_graph(graph, inputset, configuration).circuit
            circuit.server.save(str(staging / "server.zip"))
            specs = circuit.client.specs.serialize()
            specs = specs.encode() if isinstance(specs, str) else bytes(specs)
            (staging / "client.specs.json").write_bytes(specs)
            (staging / "layout.bin").write_bytes(learn_circuit_layout(circuit.client.specs).to_bytes())
            manifest = {"format": FORMAT, **_versions(), "files": {name: sha256_file(staging / name) for name in _FILES}}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if entry.exists():  # another process cached it meanwhile, or a corrupt entry: replace it
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        cached = self._load(entry)
        if cached is None:  # pragma: no cover - we just wrote it
            raise RuntimeError(f"the circuit cache entry {entry} could not be read back after writing it")
        return cached

    def _load(self, entry: Path) -> CachedCircuit | None:
        manifest_path = entry / "manifest.json"
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            if manifest.get("format") != FORMAT or {k: manifest.get(k) for k in _versions()} != _versions():
                raise ValueError("made by another version")
            for name in _FILES:
                path = entry / name
                if path.is_symlink() or files.get(name) != sha256_file(path):
                    raise ValueError(f"{name} does not match the manifest")
            specs = (entry / "client.specs.json").read_bytes()
            layout = CircuitLayout.from_bytes((entry / "layout.bin").read_bytes())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("ignoring the circuit cache entry %s (%s); compiling again", entry.name[:16], error)
            return None
        return CachedCircuit(entry, specs, layout, specs_fingerprint(specs))
