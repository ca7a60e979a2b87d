"""Keys, encryption, execution and decryption of compiled models.

The client side (:class:`FHEClient`, the only holder of secret keys) and the evaluation side
(:class:`FHEServer`) are separate objects that exchange bytes. A compiled model saved as a bundle
is used through :class:`ModelClient` / :class:`ModelServer`, served by ``veilml serve`` and
reached with :class:`RemoteModel`.

Names load on first use, so importing a submodule (the CLI's limits, for example) does not
import numpy and concrete's wrappers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FHEClient": "client",
    "write_private_file": "client",
    "FHEModel": "model",
    "FHE_MODES": "model",
    "NotCompiledError": "model",
    "FHEServer": "server",
    "ClientCodec": "codec",
    "ModelClient": "bundle",
    "ModelServer": "bundle",
    "RemoteModel": "remote_model",
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
