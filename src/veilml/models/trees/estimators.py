"""scikit-learn-style encrypted decision trees.

``fit`` trains a scikit-learn tree on quantized inputs (so thresholds land on the integer grid),
``compile`` builds the FHE circuit, ``predict(X, fhe="disable" | "simulate" | "execute")`` runs it.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ...compiler import Configuration
from ...quantization import UniformQuantizer
from ...runtime import FHEModel
from .._validation import check_X, check_y
from .lowering import lower_ensemble
from .supported import to_ensemble

__all__ = ["DecisionTreeClassifier", "DecisionTreeRegressor"]

_TREE_PARAMS = (
    "criterion",
    "splitter",
    "max_depth",
    "min_samples_split",
    "min_samples_leaf",
    "min_weight_fraction_leaf",
    "max_features",
    "random_state",
    "max_leaf_nodes",
    "min_impurity_decrease",
    "ccp_alpha",
)


class _EncryptedTree(BaseEstimator):
    """What the classifier and the regressor share: fitting, conversion, compilation, running."""

    _sklearn_name: ClassVar[str]
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_bits": [Interval(Integral, 2, 12, closed="both")],
        "leaf_bits": [Interval(Integral, 1, 16, closed="both"), None],
        "encoding": [StrOptions({"thermometer", "identity"})],
    }

    def _sklearn_class(self) -> type:
        import sklearn.tree

        return getattr(sklearn.tree, self._sklearn_name)

    def _tree_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._tree_param_names()}

    @classmethod
    def _tree_param_names(cls) -> tuple[str, ...]:
        return _TREE_PARAMS + (("class_weight",) if issubclass(cls, ClassifierMixin) else ())

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _EncryptedTree:
        """Quantize ``X`` per feature to ``n_bits``, then train the tree on the integer codes."""
        self._validate_params()
        X = check_X(X, None, type(self).__name__)
        quantizer = UniformQuantizer.calibrate(X, self.n_bits, axis=1)
        model = self._sklearn_class()(**self._tree_params())
        model.fit(quantizer.quantize(X, warn=False), check_y(y), sample_weight=sample_weight)
        self._set_fitted(model, quantizer, thresholds_are_codes=True, warn_on_clip=True)
        return self

    @classmethod
    def from_fitted(cls, model: Any, X: Any = None, n_bits: int = 6, **params: Any) -> _EncryptedTree:
        """Wrap an already trained float scikit-learn tree.

        Inputs are quantized on the min/max of ``X`` when given. Without data, each feature gets
        a grid whose code boundaries fall on (or next to) the model's own thresholds on that
        feature, so that comparing codes reproduces the float comparisons; values beyond the
        outermost thresholds are clipped, which changes no comparison. Such a grid is derived
        from the thresholds: whoever holds the client-side quantizer can read their range.
        """
        expected = cls._sklearn_name
        if type(model).__name__ != expected:
            raise TypeError(f"{cls.__name__}.from_fitted takes a fitted sklearn {expected}, got {type(model).__name__}")
        check_is_fitted(model)
        tree_params = {k: v for k, v in model.get_params().items() if k in cls._tree_param_names()}
        estimator = cls(n_bits=n_bits, **{**tree_params, **params})
        estimator._validate_params()
        ensemble = to_ensemble(model)
        if X is not None:
            X = check_X(X, ensemble.n_features, f"the {expected}")
            quantizer = UniformQuantizer.calibrate(X, n_bits, axis=1)
        else:
            quantizer = UniformQuantizer.from_cut_points(ensemble.thresholds_by_feature(), n_bits)
        estimator._set_fitted(model, quantizer, thresholds_are_codes=False, warn_on_clip=X is not None)
        return estimator

    def _set_fitted(self, model: Any, quantizer: UniformQuantizer, *, thresholds_are_codes: bool, warn_on_clip: bool) -> None:
        ensemble = to_ensemble(model)
        if not thresholds_are_codes:
            ensemble = ensemble.to_codes(quantizer)
        leaf_bits = self.n_bits if self.leaf_bits is None else self.leaf_bits
        lowered = lower_ensemble(ensemble, self.n_bits, leaf_bits, self.encoding)
        self.sklearn_model_ = model
        self.input_quantizer_ = quantizer
        self.ensemble_ = ensemble
        self.n_features_in_ = ensemble.n_features
        self.fhe_model_ = FHEModel(
            quantizer,
            lowered.encoding,
            lowered.graph,
            lowered.output_quantizer,
            output_bias=lowered.output_bias,
            output_combine=lowered.output_combine,
            warn_on_clip=warn_on_clip,
        )
        if hasattr(model, "classes_"):
            self.classes_ = model.classes_

    # ----------------------------------------------------------------------------------- FHE
    def _fitted_input(self, X: Any) -> np.ndarray:
        """``X`` checked against the fitted model (NotFittedError first, then shape and values)."""
        check_is_fitted(self)
        return check_X(X, self.n_features_in_, type(self).__name__)

    def compile(self, X: Any, configuration: Configuration | None = None, **options: Any) -> _EncryptedTree:
        """Compile the FHE circuit with an inputset made of the rows of ``X``.

        ``options`` override fields of ``configuration`` (for example ``p_error=...``,
        ``device="cuda"``). The circuit's cost figures are then in ``report_``.
        """
        X = self._fitted_input(X)
        configuration = (configuration or Configuration()).fork(**options)
        self.report_ = self.fhe_model_.compile(X, configuration).report
        return self

    def decision_scores(self, X: Any, fhe: str = "disable") -> np.ndarray:
        """Dequantized model outputs (class scores or regression values), (n_samples, n_outputs)."""
        X = self._fitted_input(X)  # before touching fhe_model_: NotFittedError comes first
        return self.fhe_model_.run(X, fhe)

    def predict_integers(self, X: Any, fhe: str = "disable") -> np.ndarray:
        """The raw integers the circuit returns: the exact oracle between FHE modes."""
        X = self._fitted_input(X)
        return self.fhe_model_.run_integers(X, fhe)


class DecisionTreeClassifier(ClassifierMixin, _EncryptedTree):
    """A decision tree classifier that predicts on encrypted data.

    Parameters:
        n_bits: input precision: each feature is quantized to ``n_bits`` unsigned bits.
        leaf_bits: precision of the quantized leaf probabilities (default: ``n_bits``).
        encoding: what the client encrypts: ``"thermometer"`` (every comparison is free; larger
            ciphertexts) or ``"identity"`` (one comparison lookup per distinct threshold).
        Other parameters are those of :class:`sklearn.tree.DecisionTreeClassifier`.
    """

    _sklearn_name = "DecisionTreeClassifier"

    def __init__(
        self,
        *,
        n_bits: int = 6,
        leaf_bits: int | None = None,
        encoding: str = "thermometer",
        criterion: str = "gini",
        splitter: str = "best",
        max_depth: int | None = None,
        min_samples_split: int | float = 2,
        min_samples_leaf: int | float = 1,
        min_weight_fraction_leaf: float = 0.0,
        max_features: int | float | str | None = None,
        random_state: Any = None,
        max_leaf_nodes: int | None = None,
        min_impurity_decrease: float = 0.0,
        class_weight: Any = None,
        ccp_alpha: float = 0.0,
    ) -> None:
        self.n_bits = n_bits
        self.leaf_bits = leaf_bits
        self.encoding = encoding
        self.criterion = criterion
        self.splitter = splitter
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.random_state = random_state
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.class_weight = class_weight
        self.ccp_alpha = ccp_alpha

    def predict_proba(self, X: Any, fhe: str = "disable") -> np.ndarray:
        """Class probabilities (quantized leaf frequencies, renormalized)."""
        scores = np.maximum(self.decision_scores(X, fhe), 0.0)
        totals = scores.sum(axis=1, keepdims=True)
        uniform = np.full_like(scores, 1.0 / scores.shape[1])
        return np.divide(scores, totals, out=uniform, where=totals > 0)

    def predict(self, X: Any, fhe: str = "disable") -> np.ndarray:
        """Class labels: the class with the highest encrypted score."""
        proba = self.predict_proba(X, fhe)
        return self.classes_[np.argmax(proba, axis=1)]


class DecisionTreeRegressor(RegressorMixin, _EncryptedTree):
    """A decision tree regressor that predicts on encrypted data.

    Parameters:
        n_bits: input precision: each feature is quantized to ``n_bits`` unsigned bits.
        leaf_bits: precision of the quantized leaf values (default: ``n_bits``).
        encoding: what the client encrypts, ``"thermometer"`` or ``"identity"``.
        Other parameters are those of :class:`sklearn.tree.DecisionTreeRegressor`.
    """

    _sklearn_name = "DecisionTreeRegressor"

    def __init__(
        self,
        *,
        n_bits: int = 6,
        leaf_bits: int | None = None,
        encoding: str = "thermometer",
        criterion: str = "squared_error",
        splitter: str = "best",
        max_depth: int | None = None,
        min_samples_split: int | float = 2,
        min_samples_leaf: int | float = 1,
        min_weight_fraction_leaf: float = 0.0,
        max_features: int | float | str | None = None,
        random_state: Any = None,
        max_leaf_nodes: int | None = None,
        min_impurity_decrease: float = 0.0,
        ccp_alpha: float = 0.0,
    ) -> None:
        self.n_bits = n_bits
        self.leaf_bits = leaf_bits
        self.encoding = encoding
        self.criterion = criterion
        self.splitter = splitter
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.random_state = random_state
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.ccp_alpha = ccp_alpha

    def predict(self, X: Any, fhe: str = "disable") -> np.ndarray:
        """Predicted values, (n_samples,) for one output."""
        scores = self.decision_scores(X, fhe)
        return scores[:, 0] if scores.shape[1] == 1 else scores
