"""Tree models: converters -> TreeEnsemble -> IR lowering, and the scikit-learn-style estimators.

The estimators (``RandomForestClassifier``, ``XGBRegressor``, ...) are made on first access, so
that XGBoost or LightGBM load only when their estimator is used.
"""

from __future__ import annotations

from typing import Any

from ..tree_families import FAMILIES
from . import estimators
from .ensemble import Tree, TreeEnsemble
from .lowering import LoweredEnsemble, lower_ensemble
from .supported import CONVERTERS, UnsupportedModelError, to_ensemble

__all__ = [
    "CONVERTERS",
    "FAMILIES",
    "LoweredEnsemble",
    "Tree",
    "TreeEnsemble",
    "UnsupportedModelError",
    "lower_ensemble",
    "to_ensemble",
    "from_onnx",
    "ImportedTreeClassifier",
    "ImportedTreeRegressor",
    *FAMILIES,
]


def __getattr__(name: str) -> Any:
    if name in FAMILIES:
        return getattr(estimators, name)
    if name in ("from_onnx", "ImportedTreeClassifier", "ImportedTreeRegressor"):
        from . import imported

        return getattr(imported, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
