"""Compiled circuits kept on disk, keyed by what determines them, so that a restart does not compile again.

An entry is a directory named by the sha256 of (the graph's content hash, the compilation
configuration, the veilml and concrete versions). It holds concrete's compiled server
(``server.zip``), the public client specs, the layout of the circuit's keys and inputs
(:mod:`veilml.runtime.validation`) and a ``manifest.json`` (:mod:`veilml.runtime.manifest`, as in bundles). An entry
whose files do not match their manifest (or that holds other files) is compiled again, never loaded. Entries are written to a
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

from veilml.compiler import Configuration, Graph, compile_graph
from veilml.compiler.serialize import graph_hash
from veilml.runtime.envelope import specs_fingerprint
from veilml.runtime.manifest import check_manifest, write_manifest
from veilml.runtime.manifest import versions as _versions
from veilml.runtime.validation import CircuitLayout, learn_circuit_layout

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
            write_manifest(staging, FORMAT)
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
        if not (entry / "manifest.json").is_file():
            return None
        try:  # the manifest checks format, versions, hashes and that no file was added or is a link
            manifest = check_manifest(entry, FORMAT)
            if sorted(manifest["files"]) != sorted(_FILES):
                raise ValueError(f"the entry holds {sorted(manifest['files'])}, not {sorted(_FILES)}")
            specs = (entry / "client.specs.json").read_bytes()
            layout = CircuitLayout.from_bytes((entry / "layout.bin").read_bytes())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("ignoring the circuit cache entry %s (%s); compiling again", entry.name[:16], error)
            return None
        return CachedCircuit(entry, specs, layout, specs_fingerprint(specs))
