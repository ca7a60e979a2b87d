"""The parts of a bundle directory, their formats, and what acts on a whole bundle (signing, fingerprints).

A bundle written by :func:`~veilml.serving.bundle.save_bundle` holds three parts, each with its own
manifest (:mod:`veilml.runtime.manifest`) and optional signature:

- ``client/`` (:data:`CLIENT_FORMAT`): for data owners; ``preprocessing.json`` when the model came from a
  Pipeline (:mod:`veilml.runtime.preprocessing`)
- ``server/`` (:data:`SERVER_FORMAT`): for whoever runs the model
- ``model/`` (:data:`MODEL_FORMAT`): for the model's owner: the integer graph (``graph.zip``, thresholds and
  leaf values) and the compile configuration, from which :func:`veilml.load` rebuilds a model that predicts
  in every mode. It holds the model itself: give it to no one (the server side's circuit computes the same
  function, but as compiled code; the client side holds nothing of it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from veilml.runtime.manifest import (
    ArtifactError,
    check_manifest,
    checked_manifest,
    load_private_key,
    read_artifact_file,
    sign_manifest,
    write_manifest,
)

__all__ = [
    "CLIENT_FORMAT",
    "MODEL_FORMAT",
    "PREPROCESSING",
    "SERVER_FORMAT",
    "SPECS",
    "bundle_side",
    "client_bundle_fingerprint",
    "prepare_destination",
    "sign_bundle",
    "write_model_part",
]

CLIENT_FORMAT = "veilml-bundle/client"
SERVER_FORMAT = "veilml-bundle/server"
MODEL_FORMAT = "veilml-bundle/model"
SPECS = "client.specs.json"
PREPROCESSING = "preprocessing.json"  #: the client's numeric preprocessing of raw rows, when there is one
_FORMATS = {"client": CLIENT_FORMAT, "server": SERVER_FORMAT, "model": MODEL_FORMAT}


def prepare_destination(directory: str | os.PathLike) -> Path:
    """The directory a bundle is saved to, its parent created: it must be new, empty or a bundle (only
    ``client/``, ``server/``, ``model/``), since saving replaces it whole; anything else is refused, not deleted."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} is a file, not a bundle directory: save to a new or empty directory")
        others = sorted(p.name for p in directory.iterdir() if p.name not in _FORMATS)
        if others:
            raise FileExistsError(
                f"{directory} holds {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}, so it is not a bundle "
                "(saving replaces the whole directory): save to a new or empty directory"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory


def bundle_side(directory: str | os.PathLike, side: str) -> Path:
    """``directory/side`` when given a whole bundle, ``directory`` itself when given one side."""
    directory = Path(directory)
    return directory / side if (directory / side / "manifest.json").exists() else directory


def write_model_part(part: Path, fhe_model: Any, private_key: Any, **facts: Any) -> None:
    """Write the ``model/`` part of a compiled :class:`~veilml.runtime.FHEModel` into the new directory ``part``."""
    from veilml.compiler.serialize import graph_to_bytes
    from veilml.runtime.restore import configuration_to_json

    part.mkdir()
    (part / "graph.zip").write_bytes(graph_to_bytes(fhe_model.graph))
    (part / "configuration.json").write_text(configuration_to_json(fhe_model.compiled.configuration))
    write_manifest(part, MODEL_FORMAT, **facts)
    if private_key is not None:
        sign_manifest(part, private_key)


def sign_bundle(directory: str | os.PathLike, signing_key: Any) -> list[Path]:
    """Sign each part of a bundle (or the one part given) as it is now; returns the signature files.

    Each part's manifest is checked first: a corrupted bundle is not signed. ``signing_key``: see
    :func:`~veilml.serving.bundle.save_bundle`.
    """
    private_key = load_private_key(signing_key)
    directory = Path(directory)
    sides = [directory / side for side in _FORMATS if (directory / side / "manifest.json").exists()]
    signed = []
    for side in sides or [directory]:
        check_manifest(side, _format_of(side))
        signed.append(sign_manifest(side, private_key))
    return signed


def _format_of(side: Path) -> str:
    """The bundle format a part's manifest claims (check_manifest checks it all next)."""
    try:
        claimed = json.loads(read_artifact_file(side / "manifest.json", 1 << 20, "manifest")).get("format")
    except (OSError, ValueError, AttributeError) as error:
        raise ArtifactError(f"{side} is not a veilml bundle ({error}); give a bundle directory") from None
    if claimed not in _FORMATS.values():
        raise ArtifactError(f"{side} holds a {claimed!r} artifact, not a veilml bundle; give a bundle directory")
    return claimed


def client_bundle_fingerprint(directory: str | os.PathLike) -> str:
    """The fingerprint of a client bundle (a whole bundle, or its ``client/``): the sha256 (hex) of its
    ``manifest.json``, which holds the sha256 of every other file, so it names every byte of the bundle.

    The bundle is checked first (every file against the manifest). A data owner who pins it
    (``RemoteModel(..., expected_fingerprint=)``, ``ModelClient(..., expected_fingerprint=)``)
    accepts that very bundle and no other. Not to be confused with a model's ``fingerprint`` (the
    sha256 of its client specs alone).
    """
    return checked_manifest(bundle_side(directory, "client"), CLIENT_FORMAT)[1]
