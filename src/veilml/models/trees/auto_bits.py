"""``n_bits="auto"``: the smallest input and leaf precisions that keep the float model's metric.

Each candidate is judged by ``FOLDS``-fold cross-validation on the fit data (stratified for
classifiers), against the library's float model on the same folds: accuracy, or R² for
regressors, averaged over the folds (one held-out split was too noisy: on 42 model/data pairs
its choice missed the float metric on the test rows 18 times). Input bits are tried from 2 up
with generous leaf bits, then leaf bits from 2 up at the chosen input bits; the first whose mean
``fhe="disable"`` metric stays within ``TOLERANCE`` of the float one wins (the largest tried, when
none does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold

__all__ = ["TOLERANCE", "BITS", "choose_bits"]

#: largest metric loss accepted against the float model: half an accuracy point, 0.01 of R²
TOLERANCE = {"classification": 0.005, "regression": 0.01}
#: precisions tried, smallest first
BITS = range(2, 9)
FOLDS = 3


def _folds(y: np.ndarray, classifier: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (fit, held out) of the cross-validation."""
    if classifier and np.unique(y, return_counts=True)[1].min() >= FOLDS:
        splitter: Any = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    else:
        splitter = KFold(FOLDS, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros((len(y), 1)), y))


def choose_bits(estimator: Any, X: np.ndarray, y: np.ndarray, sample_weight: Any = None) -> tuple[int, int, dict[str, Any]]:
    """(n_bits, leaf_bits, report) for ``estimator`` (whose ``n_bits`` is "auto") on ``X``, ``y``.

    ``report`` holds the float model's cross-validated metric, the target, and the metric of every
    precision tried (``{"n_bits": {bits: metric}, "leaf_bits": {bits: metric}}``).
    """
    classifier = is_classifier(estimator)
    metric = accuracy_score if classifier else r2_score
    tolerance = TOLERANCE["classification" if classifier else "regression"]
    weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    folds = _folds(y, classifier)

    def float_metric(fit: np.ndarray, held: np.ndarray) -> float:
        model = estimator._new_library_model()
        model.fit(X[fit], estimator._library_targets(y[fit]), sample_weight=weights[fit])
        predicted = model.predict(X[held])
        if classifier and estimator._family.module == "xgboost":
            predicted = np.unique(y[fit])[np.asarray(predicted, dtype=np.int64)]
        return float(metric(y[held], predicted))

    reference = float(np.mean([float_metric(fit, held) for fit, held in folds]))
    report: dict[str, Any] = {"float": reference, "target": reference - tolerance, "folds": FOLDS, "n_bits": {}, "leaf_bits": {}}

    def disable_metric(n_bits: int, leaf_bits: int) -> float:
        scores = []
        for fit, held in folds:
            candidate = clone(estimator).set_params(n_bits=n_bits, leaf_bits=leaf_bits)
            candidate.fit(X[fit], y[fit], sample_weight=weights[fit])
            scores.append(metric(y[held], candidate.predict(X[held])))
        return float(np.mean(scores))

    def smallest(kind: str, score: Any) -> int:
        for bits in BITS:
            report[kind][bits] = score(bits)
            if report[kind][bits] >= report["target"]:
                return bits
        return BITS[-1]

    n_bits = smallest("n_bits", lambda bits: disable_metric(bits, BITS[-1]))
    leaf_bits = smallest("leaf_bits", lambda bits: disable_metric(n_bits, bits))
    return n_bits, leaf_bits, report
