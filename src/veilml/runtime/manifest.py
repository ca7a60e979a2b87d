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

The hashes detect corruption and accidental edits, not a deliberate change: whoever alters a file
can hash it again. A server bundle is code (concrete's ``server.zip`` holds a shared library that
the server loads and runs), so it must come from someone trusted, and that is what a signature
shows: ``manifest.sig`` next to the manifest holds an Ed25519 signature of the manifest's exact
bytes (which hash every file), made with :func:`sign_manifest`. Given a trusted public key,
:func:`check_manifest` refuses a directory whose signature is missing, made by another key, or not
of these bytes; without one, signatures are not looked at (a bundle loads as it did unsigned).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SIGNATURE",
    "ArtifactError",
    "SignatureError",
    "check_manifest",
    "checked_manifest",
    "load_private_key",
    "load_public_key",
    "public_key_id",
    "read_artifact_file",
    "sha256_file",
    "sign_manifest",
    "versions",
    "write_key_pair",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_SIGNATURE_BYTES = 4096
_MAX_KEY_FILE_BYTES = 16384
# what a signature covers: this context, then the manifest's bytes (a signature of anything else
# made with the same key cannot pass for a manifest's)
_SIGNED_CONTEXT = b"veilml manifest signature v1\n"
_SIGNATURE_FORMAT = "veilml-signature"


class ArtifactError(VeilmlError, ValueError):
    """An artifact directory that must not be loaded: corrupted or altered, incomplete, unsigned or
    signed by another key when a signature is required, or from an incompatible version."""


class SignatureError(ArtifactError):
    """A signature that is missing, malformed, made by another key, or not of this manifest."""


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


def _own_file(directory: Path, path: Path) -> bool:
    """Whether ``path`` is the manifest or its signature (listed by no manifest)."""
    return path.relative_to(directory).as_posix() in (MANIFEST, SIGNATURE)


def write_manifest(directory: str | Path, fmt: str, **extra: Any) -> dict[str, Any]:
    """Hash every file under ``directory`` and write its manifest; returns what was written.

    A signature already there is left as it is: it no longer matches (sign again with :func:`sign_manifest`).
    """
    directory = Path(directory)
    files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not _own_file(directory, path)
    }
    manifest = {"format": fmt, "format_version": FORMAT_VERSION, "versions": versions(), "files": files, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_artifact_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``: a regular file (never through a link) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ArtifactError(f"{path} is a symbolic link; {what} must be a regular file") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path} is not a regular file; {what} must be one")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path} is larger than {limit} bytes: not a veilml {what}")
    return data


def checked_manifest(directory: str | Path, fmt: str, *, trusted_key: Any = None) -> tuple[dict[str, Any], str]:
    """The manifest of ``directory`` once everything in it checks out, and the sha256 (hex) of its bytes.

    Raises :class:`ArtifactError`. ``trusted_key`` (an Ed25519 public key: see
    :func:`load_public_key`) requires a signature by that key of these very bytes, checked before
    they are parsed; None checks no signature.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; give the bundle's {fmt.rsplit('/', 1)[-1]!r} directory")
    if not path.is_file() or path.is_symlink():
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not a veilml {fmt} artifact, or it is incomplete")
    raw = read_artifact_file(path, _MAX_MANIFEST_BYTES, "manifest")
    if trusted_key is not None:
        _verify(directory, raw, load_public_key(trusted_key))
    try:
        manifest = json.loads(raw)
        files = dict(manifest["files"])
        written = dict(manifest["versions"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("file names and hashes must be strings")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
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
    present = {
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if not _own_file(directory, p) and not p.is_dir()
    }
    unlisted = sorted(present - set(files))
    if unlisted:
        raise ArtifactError(
            f"{directory} holds files its manifest does not list: {unlisted}; it was corrupted or altered after saving"
        )
    for name, expected in files.items():
        file = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ArtifactError(f"{path} lists {name!r}, outside the artifact")
        if not file.is_file() or file.is_symlink():
            raise ArtifactError(f"{directory} lacks {name} (or it is not a regular file); copy the whole bundle again")
        if sha256_file(file) != expected:
            raise ArtifactError(
                f"{file} does not match its sha256 in the manifest: it was corrupted or altered after saving; "
                "copy the bundle again from its source"
            )
    return manifest, hashlib.sha256(raw).hexdigest()


def check_manifest(directory: str | Path, fmt: str, *, trusted_key: Any = None) -> dict[str, Any]:
    """The manifest of ``directory`` once everything in it checks out; raises :class:`ArtifactError`.

    ``trusted_key``: see :func:`checked_manifest`.
    """
    return checked_manifest(directory, fmt, trusted_key=trusted_key)[0]


# ---------------------------------------------------------------------------------------------
# Signatures (Ed25519, through ``cryptography``)


def _raw_public(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(public_key: Any) -> str:
    """sha256 (hex) of an Ed25519 public key's 32 raw bytes: the name a signature records (public)."""
    return hashlib.sha256(_raw_public(load_public_key(public_key))).hexdigest()


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key from a ``cryptography`` key object, PEM bytes, or the path of a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, (str, os.PathLike)):
        key = read_artifact_file(Path(key), _MAX_KEY_FILE_BYTES, "public key file")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"a trusted key is an Ed25519 public key, its PEM bytes or a PEM file's path; got {type(key).__name__}")
    try:
        public = serialization.load_pem_public_key(bytes(key))
    except ValueError as error:
        raise ValueError(f"not a PEM public key ({error}); give the .pub file written by 'veilml sign --new-key'") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(
            f"the trusted key is a {type(public).__name__}, not an Ed25519 key; make one with 'veilml sign --new-key'"
        )
    return public


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key from a ``cryptography`` key object, PEM bytes (PKCS#8, unencrypted), or the
    path of a PEM file of mode 0600 owned by this user."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veilml.runtime.private_files import read_private_file

    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, (str, os.PathLike)):
        key = read_private_file(key)
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"a signing key is an Ed25519 private key, its PEM bytes or a PEM file's path; got {type(key).__name__}")
    try:
        private = serialization.load_pem_private_key(bytes(key), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"not an unencrypted PEM private key ({error}); give the key written by 'veilml sign --new-key'"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(
            f"the signing key is a {type(private).__name__}, not an Ed25519 key; make one with 'veilml sign --new-key'"
        )
    return private


def write_key_pair(path: str | Path) -> tuple[Path, Path]:
    """Make a new Ed25519 key pair: the private key at ``path`` (PEM, mode 0600, never through a link)
    and the public key at ``path.pub`` (PEM); refuses to replace an existing key. Returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veilml.runtime.private_files import write_private_file

    path = Path(path)
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if os.path.lexists(existing):
            raise FileExistsError(f"{existing} exists; a signing key is never replaced: choose another path")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_private_file(path, pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public)
    return path, public_path


def sign_manifest(directory: str | Path, signing_key: Any) -> Path:
    """Sign the manifest of ``directory`` (as it is now) with an Ed25519 private key (see
    :func:`load_private_key`); writes and returns ``directory/manifest.sig``."""
    private = load_private_key(signing_key)
    directory = Path(directory)
    raw = read_artifact_file(directory / MANIFEST, _MAX_MANIFEST_BYTES, "manifest")
    document = {
        "format": _SIGNATURE_FORMAT,
        "version": 1,
        "algorithm": "ed25519",
        "key_id": public_key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(_SIGNED_CONTEXT + raw)).decode(),
    }
    target = directory / SIGNATURE
    if os.path.islink(target):
        raise ArtifactError(f"{target} is a symbolic link; remove it before signing")
    temporary = directory / f".{SIGNATURE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, target)
    return target


def _verify(directory: Path, raw: bytes, public_key: Any) -> None:
    """Raise :class:`SignatureError` unless ``directory``'s signature is ``public_key``'s, of ``raw``."""
    from cryptography.exceptions import InvalidSignature

    path = directory / SIGNATURE
    want = public_key_id(public_key)
    if not os.path.lexists(path):
        raise SignatureError(
            f"{directory} is not signed (no {SIGNATURE}), and a signature by the trusted key {want[:16]}... is required: "
            "a bundle is code, load only one signed by its maker ('veilml sign'), or give no trusted key"
        )
    try:
        document = json.loads(read_artifact_file(path, _MAX_SIGNATURE_BYTES, "signature"))
        if (
            not isinstance(document, dict)
            or document.get("format") != _SIGNATURE_FORMAT
            or document.get("algorithm") != "ed25519"
        ):
            raise ValueError("not a veilml Ed25519 signature")
        signature = base64.b64decode(str(document["signature"]), validate=True)
        got = str(document.get("key_id", "?"))
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise SignatureError(f"{path} is not a valid signature ({error}); refuse this bundle") from None
    if got != want:
        raise SignatureError(
            f"{directory} is signed by key {got[:16]}..., not by the trusted key {want[:16]}...; refuse this bundle "
            "(or trust its maker's key, if you know it is theirs)"
        )
    try:
        public_key.verify(signature, _SIGNED_CONTEXT + raw)
    except InvalidSignature:
        raise SignatureError(
            f"the signature in {path} does not match {directory / MANIFEST}: the bundle was altered after it was signed; "
            "refuse it"
        ) from None
