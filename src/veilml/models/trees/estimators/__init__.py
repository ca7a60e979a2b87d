"""scikit-learn-style encrypted tree models, one per family of :data:`veilml.models.trees.families.FAMILIES`.

``fit`` trains the library's own model (scikit-learn, XGBoost, LightGBM) on quantized inputs, so
that thresholds land on the integer grid; ``compile`` builds the FHE circuit; ``predict(X, fhe=
"disable" | "simulate" | "execute")`` runs it. The ensemble is summed inside the circuit: the client
decrypts one score per class (or per output) and applies the model's post-transform (sigmoid,
softmax) itself.

Each class's hyper-parameters are veilml's ``n_bits``, ``leaf_bits``, ``encoding``, ``leaf_lookups``
and ``train_on``, then its library's, keyword-only with the library's defaults, so
``XGBClassifier(max_depth=3, n_estimators=20, n_bits=6)`` works as expected and ``get_params`` /
``set_params`` / ``clone`` behave as in scikit-learn.

- :mod:`.params`: veilml's parameters (defaults, constraints, documentation)
- :mod:`.base`: :class:`~.base.EncryptedEnsemble`, what every family shares; :mod:`.tasks`: classifiers, regressors
- one module per family (``decision_tree``, ``random_forest``, ..., ``xgb``, ``lgbm``), written by
  ``scripts/generate_estimators.py`` from the libraries' signatures; they import no library, so
  XGBoost and LightGBM load only when a model is fitted
"""

from veilml.models.trees.estimators.decision_tree import DecisionTreeClassifier, DecisionTreeRegressor
from veilml.models.trees.estimators.extra_trees import ExtraTreesClassifier, ExtraTreesRegressor
from veilml.models.trees.estimators.gradient_boosting import GradientBoostingClassifier, GradientBoostingRegressor
from veilml.models.trees.estimators.hist_gradient_boosting import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from veilml.models.trees.estimators.lgbm import LGBMClassifier, LGBMRegressor
from veilml.models.trees.estimators.params import VEILML_PARAMS
from veilml.models.trees.estimators.random_forest import RandomForestClassifier, RandomForestRegressor
from veilml.models.trees.estimators.xgb import XGBClassifier, XGBRegressor

__all__ = [
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
    "LGBMClassifier",
    "LGBMRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "VEILML_PARAMS",
    "XGBClassifier",
    "XGBRegressor",
]
