"""Tree models: converters -> TreeEnsemble -> IR lowering, and the scikit-learn-style estimators.

- :mod:`.families`: the table of supported families (light: no library is imported)
- :mod:`.convert`: one front end (treelite, scikit-learn, ONNX) -> :class:`~.ensemble.TreeEnsemble`
- :mod:`.lowering`: TreeEnsemble -> the integer IR (comparisons, leaf stages, the ensemble sum)
- :mod:`.estimators`: ``RandomForestClassifier``, ``XGBRegressor``, ... ; :mod:`.auto_bits`, :mod:`.report`

Names load on first use, so that scikit-learn, XGBoost or LightGBM load only when a model needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from veilml.models.trees.families import FAMILIES

_EXPORTS = {
    **{name: "estimators" for name in FAMILIES},
    "Tree": "ensemble",
    "TreeEnsemble": "ensemble",
    "LoweredEnsemble": "lowering.ensemble",
    "lower_ensemble": "lowering.ensemble",
    "CONVERTERS": "convert.supported",
    "UnsupportedModelError": "convert.supported",
    "to_ensemble": "convert.supported",
    "from_onnx": "convert.imported",
    "ImportedTreeClassifier": "convert.imported",
    "ImportedTreeRegressor": "convert.imported",
}

__all__ = ["FAMILIES", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
