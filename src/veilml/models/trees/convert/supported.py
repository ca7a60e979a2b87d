"""The table of supported source models, keyed by class, and the one entry point ``to_ensemble``.

Dispatch reads ``module.ClassName`` along the model's class hierarchy, so nothing is imported to
recognize a model: xgboost, lightgbm and treelite load only when a model needs them. ONNX graphs
have their own entry point, :func:`veilml.models.trees.convert.onnx.from_onnx`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veilml.models.trees.convert.arrays import UnsupportedModelError
from veilml.models.trees.convert.sklearn import convert_decision_tree
from veilml.models.trees.convert.treelite import convert_lightgbm, convert_sklearn_ensemble, convert_xgboost
from veilml.models.trees.ensemble import TreeEnsemble

__all__ = ["CONVERTERS", "UnsupportedModelError", "to_ensemble"]

_FOREST = "sklearn.ensemble._forest"
_GB = "sklearn.ensemble._gb"
_HGB = "sklearn.ensemble._hist_gradient_boosting.gradient_boosting"

# "module.ClassName" of the fitted model -> converter. One explicit table, no import side effects.
CONVERTERS: dict[str, Callable[[Any], TreeEnsemble]] = {
    "sklearn.tree._classes.DecisionTreeClassifier": convert_decision_tree,
    "sklearn.tree._classes.DecisionTreeRegressor": convert_decision_tree,
    f"{_FOREST}.RandomForestClassifier": convert_sklearn_ensemble,
    f"{_FOREST}.RandomForestRegressor": convert_sklearn_ensemble,
    f"{_FOREST}.ExtraTreesClassifier": convert_sklearn_ensemble,
    f"{_FOREST}.ExtraTreesRegressor": convert_sklearn_ensemble,
    f"{_GB}.GradientBoostingClassifier": convert_sklearn_ensemble,
    f"{_GB}.GradientBoostingRegressor": convert_sklearn_ensemble,
    f"{_HGB}.HistGradientBoostingClassifier": convert_sklearn_ensemble,
    f"{_HGB}.HistGradientBoostingRegressor": convert_sklearn_ensemble,
    "xgboost.sklearn.XGBClassifier": convert_xgboost,
    "xgboost.sklearn.XGBRegressor": convert_xgboost,
    "xgboost.core.Booster": convert_xgboost,
    "lightgbm.sklearn.LGBMClassifier": convert_lightgbm,
    "lightgbm.sklearn.LGBMRegressor": convert_lightgbm,
    "lightgbm.basic.Booster": convert_lightgbm,
}

_BOOSTERS = {"xgboost.core.Booster": "xgboost.Booster", "lightgbm.basic.Booster": "lightgbm.Booster"}


def supported_models() -> list[str]:
    """Names of the supported model classes, in table order."""
    return [_BOOSTERS.get(key, key.rsplit(".", 1)[1]) for key in CONVERTERS]


def _check_fitted(model: Any) -> None:
    if not hasattr(model, "fit"):
        return  # a Booster: its converter checks that it has trees
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise NotFittedError(f"this {type(model).__name__} is not fitted; call its 'fit' first") from None


def to_ensemble(model: Any) -> TreeEnsemble:
    """Convert a fitted tree model to a :class:`TreeEnsemble`.

    Supported: scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``,
    ``GradientBoosting*``, ``HistGradientBoosting*`` (classifiers and regressors), XGBoost's
    ``XGBClassifier`` / ``XGBRegressor`` / ``Booster`` and LightGBM's ``LGBMClassifier`` /
    ``LGBMRegressor`` / ``Booster``. The ensemble's raw score, passed through
    ``ensemble.transform``, is what the model's ``predict_proba`` (classifiers) or ``predict``
    (regressors) returns. Inputs must be NaN-free (veilml refuses NaN at predict time).

    Raises:
        UnsupportedModelError: an unsupported type, or a model using something the encrypted
            evaluation cannot express (categorical splits, several outputs, an output function
            other than identity / sigmoid / softmax, ...); the message names the fix.
        sklearn.exceptions.NotFittedError (a ValueError): the model is not fitted.
    """
    for cls in type(model).__mro__:
        converter = CONVERTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if converter is not None:
            _check_fitted(model)
            return converter(model)
    raise UnsupportedModelError(
        f"no converter for {type(model).__module__}.{type(model).__name__}; supported models: "
        f"{', '.join(supported_models())} (ONNX tree ensembles: veilml.models.trees.convert.onnx.from_onnx)"
    )
