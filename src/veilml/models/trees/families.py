"""The tree families veilml wraps: one table, from estimator name to the library class it trains.

Each entry names its library's class. ``scripts/generate_estimators.py`` reads each estimator's
hyper-parameters from that class (``get_params`` of a default instance) and writes the estimator
classes (:mod:`veilml.models.trees.estimators`); ``tests/trees/test_estimator_classes.py`` checks them
against the installed libraries, so no list of parameters is kept by hand.
"""

from __future__ import annotations

import importlib
from typing import Literal, NamedTuple

__all__ = ["FAMILIES", "Family", "library_class"]


class Family(NamedTuple):
    module: str  # where the library class lives
    name: str  # its class name
    task: Literal["classification", "regression"]
    extra: str  # the veilml extra that installs the library

    @property
    def labels_as_indices(self) -> bool:
        """Whether the library's classifier wants labels 0..n-1 (XGBoost); the others keep the user's labels."""
        return self.module == "xgboost"


def _both(module: str, stem: str, extra: str, classifier: str = "Classifier", regressor: str = "Regressor") -> dict[str, Family]:
    return {
        stem + classifier: Family(module, stem + classifier, "classification", extra),
        stem + regressor: Family(module, stem + regressor, "regression", extra),
    }


FAMILIES: dict[str, Family] = {
    **_both("sklearn.tree", "DecisionTree", "core"),
    **_both("sklearn.ensemble", "RandomForest", "core"),
    **_both("sklearn.ensemble", "ExtraTrees", "core"),
    **_both("sklearn.ensemble", "GradientBoosting", "core"),
    **_both("sklearn.ensemble", "HistGradientBoosting", "core"),
    **_both("xgboost", "XGB", "trees"),
    **_both("lightgbm", "LGBM", "trees"),
}


def library_class(family: Family) -> type:
    """The library's estimator class, with an install hint when the library is missing."""
    try:
        module = importlib.import_module(family.module)
    except ImportError as error:
        raise ImportError(
            f"{family.name} needs the {family.module} package: pip install 'veilml[{family.extra}]' ({error})"
        ) from error
    return getattr(module, family.name)
