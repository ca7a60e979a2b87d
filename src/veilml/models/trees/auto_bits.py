"""``n_bits="auto"``: the smallest input and leaf precisions that keep the float model's metric.

The fit data is split once (a fifth held out, stratified for classifiers); the library's float
model trained on the rest gives the reference metric (accuracy, or R² for regressors). Input bits
are tried from 2 up with generous leaf bits, then leaf bits from 2 up at the chosen input bits; the
first that keeps the ``fhe="disable"`` metric within ``TOLERANCE`` of the float one wins (the
largest tried, when none does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

__all__ = ["TOLERANCE", "BITS", "choose_bits"]

#: largest metric loss accepted against the float model: half an accuracy point, 0.01 of R²
TOLERANCE = {"classification": 0.005, "regression": 0.01}
#: precisions tried, smallest first
BITS = range(2, 9)
MIN_HELD_OUT = 20


def _split(X: np.ndarray, y: np.ndarray, sample_weight: Any, classifier: bool) -> tuple[Any, ...]:
    weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if len(y) < 5 * MIN_HELD_OUT:  # too few rows to hold any out: judge on the fit data itself
        return X, X, y, y, weights, weights
    stratify = y if classifier and np.unique(y, return_counts=True)[1].min() >= 2 else None
    return tuple(train_test_split(X, y, weights, test_size=0.2, random_state=0, stratify=stratify))


def choose_bits(estimator: Any, X: np.ndarray, y: np.ndarray, sample_weight: Any = None) -> tuple[int, int, dict[str, Any]]:
    """(n_bits, leaf_bits, report) for ``estimator`` (whose ``n_bits`` is "auto") on ``X``, ``y``.

    ``report`` holds the float model's held-out metric, the target, and the metric of every
    precision tried (``{"n_bits": {bits: metric}, "leaf_bits": {bits: metric}}``).
    """
    classifier = is_classifier(estimator)
    metric = accuracy_score if classifier else r2_score
    tolerance = TOLERANCE["classification" if classifier else "regression"]
    X_fit, X_held, y_fit, y_held, w_fit, _ = _split(X, y, sample_weight, classifier)

    float_model = estimator._new_library_model()
    float_model.fit(X_fit, estimator._library_targets(y_fit), sample_weight=w_fit)
    predicted = float_model.predict(X_held)
    if classifier and estimator._family.module == "xgboost":
        predicted = np.unique(y_fit)[np.asarray(predicted, dtype=np.int64)]
    float_metric = float(metric(y_held, predicted))
    report: dict[str, Any] = {"float": float_metric, "target": float_metric - tolerance, "n_bits": {}, "leaf_bits": {}}

    def disable_metric(n_bits: int, leaf_bits: int) -> float:
        candidate = clone(estimator).set_params(n_bits=n_bits, leaf_bits=leaf_bits)
        candidate.fit(X_fit, y_fit, sample_weight=w_fit)
        return float(metric(y_held, candidate.predict(X_held)))

    def smallest(kind: str, score: Any) -> int:
        for bits in BITS:
            report[kind][bits] = score(bits)
            if report[kind][bits] >= report["target"]:
                return bits
        return BITS[-1]

    n_bits = smallest("n_bits", lambda bits: disable_metric(bits, BITS[-1]))
    leaf_bits = smallest("leaf_bits", lambda bits: disable_metric(n_bits, bits))
    return n_bits, leaf_bits, report
