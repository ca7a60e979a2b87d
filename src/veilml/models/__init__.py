"""Model families. Each loads its heavy dependencies only when first used."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DecisionTreeClassifier", "DecisionTreeRegressor"]

_LAZY = {"DecisionTreeClassifier": ".trees", "DecisionTreeRegressor": ".trees"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
