"""Manifests: what a directory of artifacts is, which versions made it, and the sha256 of every file.

A manifest is ``manifest.json`` next to the files it lists::

    {"format": "veilml-bundle/client", "format_version": 1,
     "versions": {"veilml": "0.1.0", "concrete-python": "2.11.0"},
     "files": {"codec.json": "<sha256>", ...}, ...}

Loading checks it before any listed file is parsed: the format and its version, that concrete's
serializations were written by a concrete-python of the same major.minor release (concrete does
not read another release's circuits), that every listed file exists, is a regular file (not a
link) and has its hash, and that no unlisted file was added. veilml's own version is recorded,
not required: a newer veilml reads an older bundle of the same format version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["ArtifactError", "FORMAT_VERSION", "check_manifest", "sha256_file", "versions", "write_manifest"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20


class ArtifactError(ValueError):
    """An artifact directory that must not be loaded: tampered, incomplete, or from an incompatible version."""


def versions() -> dict[str, str]:
    """The versions that an artifact written now records."""
    from importlib.metadata import version

    from veilml import __version__

    return {"veilml": __version__, "concrete-python": version("concrete-python")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _release(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")[:2])


def write_manifest(directory: str | Path, fmt: str, **extra: Any) -> dict[str, Any]:
    """Hash every file under ``directory`` and write its manifest; returns what was written."""
    directory = Path(directory)
    files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {"format": fmt, "format_version": FORMAT_VERSION, "versions": versions(), "files": files, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check_manifest(directory: str | Path, fmt: str) -> dict[str, Any]:
    """The manifest of ``directory`` once everything in it checks out; raises :class:`ArtifactError`."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; give the bundle's {fmt.rsplit('/', 1)[-1]!r} directory")
    if not path.is_file() or path.is_symlink():
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not a veilml {fmt} artifact, or it is incomplete")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes: not a veilml manifest")
    try:
        manifest = json.loads(path.read_text())
        files = dict(manifest["files"])
        written = dict(manifest["versions"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("file names and hashes must be strings")
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{path} is not a valid manifest ({error}); save the model again") from None
    if manifest.get("format") != fmt:
        raise ArtifactError(f"{directory} holds a {manifest.get('format')!r} artifact, not a {fmt!r} one")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} has format version {manifest.get('format_version')!r} (veilml {written.get('veilml', '?')}); "
            f"this veilml reads version {FORMAT_VERSION}: install the veilml that wrote it, or save the model again with this one"
        )
    ours = versions()["concrete-python"]
    theirs = str(written.get("concrete-python", "?"))
    if _release(theirs) != _release(ours):
        raise ArtifactError(
            f"{directory} was written with concrete-python {theirs}, and {ours} is installed: concrete reads only "
            f"circuits and keys of its own release ({'.'.join(_release(ours))}.x); install concrete-python=={theirs} "
            "or compile and save the model again"
        )
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.name != MANIFEST and not p.is_dir()}
    unlisted = sorted(present - set(files))
    if unlisted:
        raise ArtifactError(f"{directory} holds files its manifest does not list: {unlisted}; it was modified after saving")
    for name, expected in files.items():
        file = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ArtifactError(f"{path} lists {name!r}, outside the artifact")
        if not file.is_file() or file.is_symlink():
            raise ArtifactError(f"{directory} lacks {name} (or it is not a regular file); copy the whole bundle again")
        if sha256_file(file) != expected:
            raise ArtifactError(
                f"{file} does not match its sha256 in the manifest: it was modified after saving; copy the bundle again"
            )
    return manifest
