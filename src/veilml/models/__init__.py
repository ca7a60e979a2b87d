"""Model families. Each loads its heavy dependencies only when first used."""

from __future__ import annotations

import importlib
from typing import Any

from veilml.models.trees.families import FAMILIES

__all__ = [*FAMILIES, "from_onnx"]

_LAZY = {**{name: ".trees" for name in FAMILIES}, "from_onnx": ".trees"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
