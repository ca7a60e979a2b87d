"""``n_bits="auto"``: the smallest input and leaf precisions that keep the float model's metric.

Each candidate is judged by ``FOLDS``-fold cross-validation on the fit data (stratified for
classifiers), against the library's float model on the same folds: accuracy, or R² for
regressors, averaged over the folds (one held-out split was too noisy: on 42 model/data pairs
its choice missed the float metric on the test rows 18 times). Input bits are tried from 2 up
with generous leaf bits, then leaf bits from 2 up at the chosen input bits; the first whose mean
``fhe="disable"`` metric stays within ``TOLERANCE`` of the float one wins (the largest tried, when
none does). With ``train_on="float"`` the encrypted model is the float model with rounded
thresholds, and a candidate is judged instead by its agreement with the float model's predictions
on the held-out rows (share of equal labels, or ``1 - MSE / var(y)``), which must stay above
``1 - AGREEMENT_TOLERANCE``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold

__all__ = ["AGREEMENT_TOLERANCE", "BITS", "TOLERANCE", "choose_bits"]

#: largest metric loss accepted against the float model: half an accuracy point, 0.01 of R²
TOLERANCE = {"classification": 0.005, "regression": 0.01}
#: precisions tried, smallest first
BITS = range(2, 9)
#: with train_on="float": largest share of held-out rows whose label differs from the float model's
#: (or 1 - MSE to its predictions / var(y)): 0.2 %, stricter than TOLERANCE because a disagreement
#: measured on a few hundred held-out rows is itself noisy (0.5 % let 5 of 42 rows miss on test)
AGREEMENT_TOLERANCE = 0.002
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

    def float_predictions(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        model = estimator._new_library_model()
        model.fit(X[fit], estimator._library_targets(y[fit]), sample_weight=weights[fit])
        predicted = model.predict(X[held])
        if classifier and estimator._family.labels_as_indices:
            predicted = np.unique(y[fit])[np.asarray(predicted, dtype=np.int64)]
        return predicted

    reference_predictions = [float_predictions(fit, held) for fit, held in folds]
    reference = float(np.mean([metric(y[held], p) for (_, held), p in zip(folds, reference_predictions)]))
    # A model trained in float and rounded (train_on="float") is judged by how closely it
    # reproduces the float model's predictions: far less noisy than the difference of two
    # metrics on a few held-out rows. One trained on codes is another model: judged by its metric.
    agreement = getattr(estimator, "train_on", "codes") == "float"
    if agreement:
        report: dict[str, Any] = {
            "float": 1.0,
            "target": 1.0 - AGREEMENT_TOLERANCE,
            "criterion": "agreement with the float model",
        }
    else:
        report = {"float": reference, "target": reference - tolerance, "criterion": "metric"}
    report.update({"float_metric": reference, "folds": FOLDS, "n_bits": {}, "leaf_bits": {}})

    def agreement_score(held: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> float:
        """Share of rows with the float model's label, or 1 - MSE to its predictions / variance of y."""
        if classifier:
            return float(np.mean(ours == theirs))
        return float(1.0 - np.mean((ours - theirs) ** 2) / max(float(np.var(y[held])), 1e-300))

    def disable_metric(n_bits: int, leaf_bits: int) -> float:
        scores = []
        for (fit, held), theirs in zip(folds, reference_predictions):
            candidate = clone(estimator).set_params(n_bits=n_bits, leaf_bits=leaf_bits)
            candidate.fit(X[fit], y[fit], sample_weight=weights[fit])
            ours = candidate.predict(X[held])
            scores.append(agreement_score(held, ours, theirs) if agreement else metric(y[held], ours))
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
