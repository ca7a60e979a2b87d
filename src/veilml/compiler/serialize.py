"""Graph serialization: JSON for the structure, one ``.npz`` for the arrays.

``save_graph(graph, directory)`` writes ``graph.json`` and ``arrays.npz``; ``graph_to_bytes`` packs
both in one zip. Both round-trip exactly, and :func:`graph_hash` identifies a graph's content.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .ir import Graph, IRError, Node, Ops

__all__ = ["FORMAT_VERSION", "graph_from_bytes", "graph_hash", "graph_to_bytes", "load_graph", "save_graph"]

FORMAT_VERSION = 1


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value, dtype=np.int64)
        return {"array": key}
    if isinstance(value, tuple):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        return np.asarray(arrays[value["array"]], dtype=np.int64)
    if isinstance(value, list):
        return tuple(_decode(v, arrays) for v in value)
    return value


def to_document(graph: Graph) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON-able description of ``graph`` and the arrays it refers to."""
    arrays: dict[str, np.ndarray] = {}
    nodes = [
        {"op": n.op.value, "src": list(n.src), "size": n.size, "arg": _encode(n.arg, arrays)}
        for n in graph.nodes
    ]
    return {"format": "veilml-ir", "version": FORMAT_VERSION, "nodes": nodes}, arrays


def from_document(document: dict[str, Any], arrays: Any) -> Graph:
    if document.get("format") != "veilml-ir":
        raise IRError("not a veilml IR document")
    if document.get("version") != FORMAT_VERSION:
        raise IRError(
            f"IR format version {document.get('version')} is not supported by this veilml "
            f"(it reads version {FORMAT_VERSION}); re-export the model with this veilml"
        )
    nodes = tuple(
        Node(Ops(d["op"]), tuple(d["src"]), _decode(d["arg"], arrays), int(d["size"]))
        for d in document["nodes"]
    )
    return Graph(nodes).verify()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_graph(graph: Graph, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document, arrays = to_document(graph)
    (directory / "graph.json").write_text(json.dumps(document, indent=1))
    (directory / "arrays.npz").write_bytes(_npz_bytes(arrays))


def load_graph(directory: str | Path) -> Graph:
    directory = Path(directory)
    document = json.loads((directory / "graph.json").read_text())
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        return from_document(document, arrays)


def graph_to_bytes(graph: Graph) -> bytes:
    document, arrays = to_document(graph)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("graph.json", json.dumps(document, sort_keys=True))
        archive.writestr("arrays.npz", _npz_bytes(arrays))
    return buffer.getvalue()


def graph_from_bytes(data: bytes) -> Graph:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        document = json.loads(archive.read("graph.json"))
        with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as arrays:
            return from_document(document, arrays)


def graph_hash(graph: Graph) -> str:
    """sha256 of the graph's canonical JSON and array contents."""
    document, arrays = to_document(graph)
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()
