"""Graph serialization: JSON for the structure, one ``.npz`` for the arrays.

``save_graph(graph, directory)`` writes ``graph.json`` and ``arrays.npz``; ``graph_to_bytes`` packs
both in one zip. Both round-trip exactly, and :func:`graph_hash` identifies a graph's content.

``graph.json`` records the graph's hash and loading recomputes it: a modified or corrupted file is
refused. Loading treats its input as hostile: archives may hold only the expected members, sizes are
bounded (``max_bytes``, checked on the declared sizes and enforced while inflating, since headers can
lie), arrays must be plain integer ``.npy`` arrays (never pickles).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from veilml.compiler.ir import Graph, IRError, Node, Ops
from veilml.compiler.spec import verify_graph

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "graph_from_bytes",
    "graph_hash",
    "graph_to_bytes",
    "load_graph",
    "save_graph",
]

FORMAT_VERSION = 2  # 2: graph.json carries the graph's hash, checked on load (version 1 is refused)
DEFAULT_MAX_BYTES = 64 * 2**20  # uncompressed bytes of one archive (or file) that loading accepts by default
_OUTER_MEMBERS = frozenset({"graph.json", "arrays.npz"})
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_ARRAY_MEMBER = re.compile(r"a[0-9]{1,9}\.npy")


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
    nodes = [{"op": n.op.value, "src": list(n.src), "size": n.size, "arg": _encode(n.arg, arrays)} for n in graph.nodes]
    return {"format": "veilml-ir", "version": FORMAT_VERSION, "nodes": nodes}, arrays


def from_document(document: dict[str, Any], arrays: Any) -> Graph:
    if not isinstance(document, dict) or document.get("format") != "veilml-ir":
        raise IRError("not a veilml IR document")
    if document.get("version") != FORMAT_VERSION:
        raise IRError(
            f"IR format version {document.get('version')} is not supported by this veilml "
            f"(it reads version {FORMAT_VERSION}); re-export the model with this veilml"
        )
    try:
        nodes = tuple(Node(Ops(d["op"]), tuple(d["src"]), _decode(d["arg"], arrays), int(d["size"])) for d in document["nodes"])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as error:
        raise IRError(f"malformed IR document ({type(error).__name__}: {error}); re-export the model") from None
    return verify_graph(Graph(nodes))


# ------------------------------------------------------------------------------------ bounded reading
def _limit_error(what: str, max_bytes: int, declared: int | None = None) -> IRError:
    said = "" if declared is None else f" (it declares {declared:,} bytes)"
    return IRError(
        f"{what} holds more than the limit of {max_bytes:,} bytes{said}; if this model is trusted and really "
        "that large, pass a larger max_bytes to load_graph / graph_from_bytes"
    )


class _Budget:
    """Uncompressed bytes still allowed for one archive."""

    def __init__(self, max_bytes: int, what: str) -> None:
        self.max_bytes, self.left, self.what = max_bytes, max_bytes, what

    def read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        """The member's bytes, trusting neither its declared size nor its compressed stream."""
        if info.flag_bits & 0x1:
            raise IRError(f"{self.what}: member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise IRError(f"{self.what}: member {info.filename!r} uses an unsupported compression ({info.compress_type})")
        what = f"{self.what} (member {info.filename!r}) uncompressed"
        if info.file_size > self.left:  # the declared size
            raise _limit_error(what, self.max_bytes, info.file_size)
        try:
            with archive.open(info) as member:  # inflates at most left + 1 bytes, whatever the header says
                data = member.read(self.left + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise IRError(f"{self.what}: member {info.filename!r} is corrupt ({error})") from None
        if len(data) > self.left:
            raise _limit_error(what, self.max_bytes)
        self.left -= len(data)
        return data


def _members(archive: zipfile.ZipFile, what: str, allowed: Callable[[str], bool]) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise IRError(f"{what} holds the same member twice: it was not written by veilml")
    unexpected = [name for name in names if not allowed(name)]
    if unexpected:
        raise IRError(f"{what} holds unexpected members {unexpected[:5]}: it was not written by veilml")
    return infos


def _open_zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise IRError(f"{what} is not a valid zip archive ({error})") from None


def _read_arrays(data: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """The integer arrays of an ``arrays.npz``, its members bounded in number, size and type."""
    arrays: dict[str, np.ndarray] = {}
    budget = _Budget(max_bytes, "arrays.npz")
    with _open_zip(data, "arrays.npz") as archive:
        for info in _members(archive, "arrays.npz", lambda name: bool(_ARRAY_MEMBER.fullmatch(name))):
            raw = budget.read(archive, info)
            buffer = io.BytesIO(raw)
            try:
                version = np.lib.format.read_magic(buffer)
                if version not in _NPY_HEADERS:
                    raise ValueError(f".npy format version {version}")
                shape, _, dtype = _NPY_HEADERS[version](buffer)
            except (ValueError, SyntaxError) as error:
                raise IRError(f"arrays.npz: {info.filename} is not a valid .npy array ({error})") from None
            if dtype.kind not in "iu" or dtype.hasobject:
                raise IRError(f"arrays.npz: {info.filename} holds {dtype}, the IR stores integers only")
            if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(raw) - buffer.tell():
                raise IRError(f"arrays.npz: {info.filename} announces shape {shape} but carries another amount of data")
            buffer.seek(0)
            arrays[info.filename[: -len(".npy")]] = np.load(buffer, allow_pickle=False)
    return arrays


def _read_file(path: Path, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size > max_bytes:
        raise _limit_error(str(path), max_bytes, size)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _limit_error(str(path), max_bytes)
    return data


def _parse_document(text: bytes) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except RecursionError:
        raise IRError("graph.json is nested too deeply: it was not written by veilml") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IRError(f"graph.json is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise IRError("not a veilml IR document")
    return document


def _graph_of(document: dict[str, Any], arrays: dict[str, np.ndarray]) -> Graph:
    """The graph of a loaded document, checked against the hash the document carries."""
    expected = document.pop("hash", None)
    graph = from_document(document, arrays)
    if not isinstance(expected, str):
        raise IRError("graph.json carries no hash of the graph: re-export the model with this veilml")
    actual = graph_hash(graph)
    if actual != expected:
        raise IRError(
            f"arrays.npz or graph.json does not match graph.json's hash (recorded {expected[:12]}…, "
            f"found {actual[:12]}…): the files were modified or corrupted; re-export the model"
        )
    used = len(to_document(graph)[1])
    if len(arrays) != used:
        raise IRError(f"arrays.npz holds {len(arrays)} arrays, the graph uses {used}: it was not written by veilml")
    return graph


# ------------------------------------------------------------------------------------ files and bytes
def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _document_with_hash(graph: Graph) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    document, arrays = to_document(graph)
    document["hash"] = graph_hash(graph)
    return document, arrays


def save_graph(graph: Graph, directory: str | Path) -> None:
    """Write ``graph.json`` (structure and the graph's hash) and ``arrays.npz`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document, arrays = _document_with_hash(graph)
    (directory / "graph.json").write_text(json.dumps(document, indent=1))
    (directory / "arrays.npz").write_bytes(_npz_bytes(arrays))


def load_graph(directory: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Graph:
    """Read :func:`save_graph`'s files; each file, and the arrays inside ``arrays.npz``, are bounded
    by ``max_bytes`` uncompressed bytes, and the graph must match the hash in ``graph.json``."""
    directory = Path(directory)
    document = _parse_document(_read_file(directory / "graph.json", max_bytes))
    arrays = _read_arrays(_read_file(directory / "arrays.npz", max_bytes), max_bytes)
    return _graph_of(document, arrays)


def graph_to_bytes(graph: Graph) -> bytes:
    """``graph.json`` and ``arrays.npz`` in one zip."""
    document, arrays = _document_with_hash(graph)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("graph.json", json.dumps(document, sort_keys=True))
        archive.writestr("arrays.npz", _npz_bytes(arrays))
    return buffer.getvalue()


def graph_from_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Graph:
    """Read :func:`graph_to_bytes`'s archive.

    The archive holds exactly ``graph.json`` and ``arrays.npz``; their uncompressed size, and that
    of the arrays inside ``arrays.npz``, are each bounded by ``max_bytes`` (the declared sizes are
    checked, and reading stops at the limit whatever they say); the graph must match the hash in
    ``graph.json``. Raises :class:`~veilml.compiler.IRError` (a ``ValueError``) otherwise.
    """
    budget = _Budget(max_bytes, "the IR archive")
    with _open_zip(data, "the IR archive") as archive:
        infos = {info.filename: info for info in _members(archive, "the IR archive", _OUTER_MEMBERS.__contains__)}
        missing = sorted(_OUTER_MEMBERS - set(infos))
        if missing:
            raise IRError(f"the IR archive lacks {missing}: it was not written by graph_to_bytes")
        document = _parse_document(budget.read(archive, infos["graph.json"]))
        npz = budget.read(archive, infos["arrays.npz"])
    return _graph_of(document, _read_arrays(npz, max_bytes))


def graph_hash(graph: Graph) -> str:
    """sha256 of the graph's canonical JSON and array contents."""
    document, arrays = to_document(graph)
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()
