"""Tree models: converters -> TreeEnsemble -> IR lowering, and the scikit-learn-style estimators."""

from .ensemble import Tree, TreeEnsemble
from .estimators import DecisionTreeClassifier, DecisionTreeRegressor
from .lowering import LoweredEnsemble, lower_ensemble
from .supported import CONVERTERS, UnsupportedModelError, to_ensemble

__all__ = [
    "CONVERTERS",
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "LoweredEnsemble",
    "Tree",
    "TreeEnsemble",
    "UnsupportedModelError",
    "lower_ensemble",
    "to_ensemble",
]
