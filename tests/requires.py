"""Optional dependencies of the test suite, imported strictly under CI.

``require("peft", "lora")`` is ``pytest.importorskip`` on a developer's machine, where an extra may be
missing on purpose. Under CI (``CI`` or ``VEILML_STRICT_TESTS`` set to 1/true/yes) it is a plain import:
an extra that failed to install or import is a collection error, and the run fails instead of skipping
every test that needs it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

TRUTHY = {"1", "true", "yes", "on"}


def strict() -> bool:
    """Whether missing dependencies and unexpected skips fail the run (CI)."""
    return any(os.environ.get(name, "").strip().lower() in TRUTHY for name in ("VEILML_STRICT_TESTS", "CI"))


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (installed by ``pip install -e '.[extra]'``); skip without it, except under CI."""
    if not strict():
        return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[{extra}]')")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} (veilml extra '{extra}') cannot be imported under CI: {error}. "
            f"Install it with `pip install -e '.[test]'`; CI does not skip tests for a missing dependency."
        ) from error
