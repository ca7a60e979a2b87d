"""Model families. Each loads its heavy dependencies only when first used."""

from __future__ import annotations

from veilml._lazy import lazy_exports
from veilml.models.trees.families import FAMILIES

__all__ = [*FAMILIES, "from_onnx"]

_LAZY = {**{name: ".trees" for name in FAMILIES}, "from_onnx": ".trees"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
