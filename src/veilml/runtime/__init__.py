"""Keys, encryption, execution and decryption of compiled models.

The client side (:class:`FHEClient`, the only holder of secret keys) and the evaluation side
(:class:`FHEServer`) are separate objects that exchange bytes: envelopes (the one framing), checked
parameters (:mod:`.security`), seeded inputs, validated layouts, the circuit cache and manifests.
Deployment (bundles, ``veilml serve``, :class:`~veilml.serving.RemoteModel`) is :mod:`veilml.serving`.

Names load on first use, so importing a submodule does not import numpy and concrete's wrappers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FHEClient": "client",
    "write_private_file": "private_files",
    "FHEModel": "model",
    "FHE_MODES": "model",
    "NotCompiledError": "model",
    "FHEServer": "server",
    "ClientCodec": "codec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
