"""The table of supported source models, keyed by class, and the one entry point ``to_ensemble``."""

from __future__ import annotations

from typing import Any, Callable

from .convert_sklearn import convert_decision_tree
from .ensemble import TreeEnsemble

__all__ = ["CONVERTERS", "UnsupportedModelError", "to_ensemble"]


class UnsupportedModelError(TypeError):
    """No converter knows this model type."""


# "module.ClassName" of the fitted model -> converter. One explicit table, no import side effects.
CONVERTERS: dict[str, Callable[[Any], TreeEnsemble]] = {
    "sklearn.tree._classes.DecisionTreeClassifier": convert_decision_tree,
    "sklearn.tree._classes.DecisionTreeRegressor": convert_decision_tree,
}


def to_ensemble(model: Any) -> TreeEnsemble:
    """Convert a fitted tree model to a :class:`TreeEnsemble`."""
    for cls in type(model).__mro__:
        converter = CONVERTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if converter is not None:
            if not hasattr(model, "tree_") and not hasattr(model, "estimators_"):
                raise ValueError(f"this {type(model).__name__} is not fitted; call its 'fit' first")
            return converter(model)
    supported = ", ".join(sorted(name.rsplit(".", 1)[1] for name in CONVERTERS))
    raise UnsupportedModelError(
        f"no converter for {type(model).__module__}.{type(model).__name__}; supported models: {supported}"
    )
