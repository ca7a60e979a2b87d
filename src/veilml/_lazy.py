"""Names a package exports without importing them: each loads its module on first use.

``import veilml`` (and each subpackage) stays light this way: scikit-learn, concrete, torch or FastAPI
load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], missing: str | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to the module (relative to the
    package, like ``"bundle"`` or ``".bundle"``, or absolute) that defines it; the value is cached in the
    package once loaded. ``missing``, if given, is added to the ImportError of a module that cannot load
    (the extra to install)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = exports[name]
        target = target if target.startswith("veilml") else f"{package}.{target.lstrip('.')}"
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            if missing is None:
                raise
            raise ImportError(f"{package}.{name} needs {missing} ({error})") from error
        value = namespace[name] = getattr(module, name)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
