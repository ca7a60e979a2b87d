"""What encrypted classifiers and regressors add to :class:`~.base.EncryptedEnsemble`: targets, labels, outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets

from veilml.models.trees.estimators.base import EncryptedEnsemble
from veilml.runtime.codec import OutputSpec
from veilml.runtime.data_checks import check_y

__all__ = ["EncryptedClassifier", "EncryptedRegressor"]


class EncryptedClassifier(ClassifierMixin, EncryptedEnsemble):
    """An encrypted classifier: class labels, probabilities from the decrypted scores."""

    def _check_targets(self, y: Any) -> np.ndarray:
        y = check_y(y)
        check_classification_targets(y)
        if len(np.unique(y)) < 2:
            raise ValueError(
                f"y has one class only ({np.unique(y)[0]!r}): a classifier needs at least 2 classes; "
                "check the labels (or predict the constant yourself)"
            )
        return y

    def _library_targets(self, y: np.ndarray) -> np.ndarray:
        # XGBoost wants labels 0..n-1; the others keep the user's labels (class_weight is keyed by them)
        if self._family is not None and self._family.labels_as_indices:
            return np.unique(y, return_inverse=True)[1]
        return y

    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, progress: bool | None = None) -> EncryptedClassifier:
        super().fit(X, y, sample_weight, progress=progress)
        if self._family is not None and self._family.labels_as_indices:
            self.classes_ = np.unique(check_y(y))
        return self

    def _set_outputs(self, model: Any, ensemble: Any) -> None:
        classes = getattr(model, "classes_", None)
        if classes is None:
            classes = getattr(ensemble, "classes", None)
        if classes is None:
            classes = np.arange(max(ensemble.n_outputs, 2))
        self.classes_ = np.asarray(classes)

    def _output_spec(self, ensemble: Any) -> OutputSpec:
        return OutputSpec("classification", ensemble.post_transform, tuple(self.classes_.tolist()))

    def predict_proba(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto", progress: bool | None = None) -> np.ndarray:
        """Class probabilities: the model's post-transform of the decrypted scores (renormalized
        leaf frequencies for forests and single trees), as the client bundle computes them.
        ``fhe_path``, ``progress``: see ``decision_scores``."""
        raw = self.decision_scores(X, fhe, fhe_path=fhe_path, progress=progress)
        return self.fhe_model_.codec.finish(raw)

    def predict(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto", progress: bool | None = None) -> np.ndarray:
        """Class labels: the class with the highest encrypted score (``fhe_path``, ``progress``: see ``decision_scores``)."""
        proba = self.predict_proba(X, fhe, fhe_path=fhe_path, progress=progress)  # NotFittedError before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]


class EncryptedRegressor(RegressorMixin, EncryptedEnsemble):
    """An encrypted regressor: values from the decrypted scores."""

    def predict(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto", progress: bool | None = None) -> np.ndarray:
        """Predicted values, (n_samples,) for one output (``fhe_path``, ``progress``: see ``decision_scores``)."""
        raw = self.decision_scores(X, fhe, fhe_path=fhe_path, progress=progress)  # NotFittedError before ensemble_ is read
        scores = self.fhe_model_.codec.finish(raw)
        return scores[:, 0] if scores.shape[1] == 1 else scores
