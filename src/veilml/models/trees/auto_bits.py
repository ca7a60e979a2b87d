"""``n_bits="auto"``: the cheapest circuit among the input and leaf precisions whose metric is as good as the best's.

**Metric.** Each candidate ``(n_bits, leaf_bits)`` is judged by ``FOLDS``-fold cross-validation on
the fit data (stratified for classifiers): its ``fhe="disable"`` accuracy, or R² for regressors,
averaged over the folds (one held-out split was too noisy: on 42 model/data pairs its choice missed
the float metric on the test rows 18 times). With ``train_on="float"`` the encrypted model is the
float model with rounded thresholds, and a candidate is judged instead by its agreement with the
float model's predictions on the held-out rows (share of equal labels, or ``1 - MSE / var(y)``).

**Cost.** :func:`circuit_cost`: concrete's complexity of the circuit that ``compile`` would keep,
estimated from the lowered IR without compiling (microseconds per candidate, against 1-3 s per leaf
stage for a compilation). TFHE's cost is the programmable bootstraps (PBS), and concrete's
complexity of one PBS is set by two things the IR's range analysis gives exactly: the precision of
its input (the lookup's width: the crypto parameters grow with it, steeply from 6 bits), and whether
its output is summed into an encrypted value wider than 8 bits (concrete must then carry that wider
message through the bootstrap, which took larger parameters, ~1.4x, on every circuit measured). So
the estimate is the sum over lookups of ``PBS_COMPLEXITY[input bits]`` (times ``WIDE_SUM_FACTOR``
for those), the minimum over the leaf stages ``compile`` chooses between. Measured with
concrete-python 2.11 on the README's XGBoost (20 trees, depth 4, breast cancer; 70 compiled
circuits, n_bits 2-5 x leaf_bits 2-8 x leaf stages): every pair of candidates whose complexities
differ by more than 3 % is ranked as concrete ranks it, and each estimate is within 5 % of
concrete's figure. (The IR's per-row seconds, :mod:`veilml.compiler.cost`, rank 75 % of those pairs:
they weigh a 5-bit lookup 2.9x a 3-bit one where concrete's complexity says 1.8x, and do not see
wide sums.) Inputs and outputs are not counted: their cost follows ``n_bits`` and is reported by
``fhe_report()``; the lookups dominate the server's time.

**Choice.** Input bits 2 to 8 are tried with the default leaf bits, then smaller leaf bits at the
best of those. Among every candidate tried, those whose metric is within ``TOLERANCE`` of the best
tried (``AGREEMENT_TOLERANCE`` for agreement) are eligible, and the cheapest eligible one wins; costs
within ``COST_TIE`` (5 %) of the cheapest are a tie, won by the higher metric (a leaf bit less that
saves 1 % of the lookups' cost is not worth a noisier model). No tried candidate is then better on
both metric and cost: one with a higher metric would be eligible, and if it were also cheaper it
would be among the tied and win. The report
(``auto_bits_report_``) lists each candidate's metric and cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold

from veilml.compiler import Graph
from veilml.compiler.cost import _component_widths
from veilml.compiler.ir import Ops
from veilml.compiler.ranges import infer_ranges
from veilml.quantization import RangeWarningScope
from veilml.runtime.progress import progress_bar

__all__ = ["AGREEMENT_TOLERANCE", "BITS", "PBS_COMPLEXITY", "TOLERANCE", "choose_bits", "circuit_cost"]

logger = logging.getLogger("veilml.trees")

#: largest metric loss accepted against the best candidate: half an accuracy point, 0.01 of R²
TOLERANCE = {"classification": 0.005, "regression": 0.01}
#: precisions tried, smallest first
BITS = range(2, 9)
#: with train_on="float": largest loss of agreement with the float model's predictions against the
#: best candidate's (share of rows, or of 1 - MSE / var(y)): stricter than TOLERANCE because a
#: disagreement measured on a few hundred held-out rows is itself noisy
AGREEMENT_TOLERANCE = 0.002
FOLDS = 3
#: concrete-python 2.11's complexity of one PBS by input precision (bits): 60 lookups summed into a
#: 6-8-bit output, veilml's default Configuration (global_p_error 1e-5); about 2.3x per bit beyond
PBS_COMPLEXITY = {1: 4.8e7, 2: 5.3e7, 3: 6.4e7, 4: 7.8e7, 5: 1.16e8, 6: 7.4e8, 7: 1.68e9, 8: 3.81e9}
#: a lookup whose output is summed into a value wider than WIDE_SUM_BITS costs WIDE_SUM_FACTOR x
#: (measured 1.41-1.50x at every input precision, 1.42x on the trees' value lookups)
WIDE_SUM_BITS, WIDE_SUM_FACTOR = 8, 1.42
#: relative cost difference below which two candidates cost the same (the estimate's own precision, ~5 %)
COST_TIE = 0.05


def _pbs_complexity(bits: int) -> float:
    top = max(PBS_COMPLEXITY)
    return PBS_COMPLEXITY[min(max(bits, 1), top)] * 2.3 ** max(0, bits - top)


def graph_complexity(graph: Graph) -> float:
    """Concrete's complexity of ``graph``'s lookups, estimated from its range analysis (see the module's docstring)."""
    widths = _component_widths(graph, infer_ranges(graph))
    total = 0.0
    for i, node in enumerate(graph.nodes):
        if node.op in (Ops.LUT, Ops.CMP, Ops.ROUND):
            bits = widths[node.src[0]] - (node.arg[0] if node.op is Ops.ROUND else 0)
            wide = WIDE_SUM_FACTOR if widths[i] > WIDE_SUM_BITS else 1.0
            total += node.size * _pbs_complexity(bits) * wide
    return total


def circuit_cost(estimator: Any) -> float:
    """The estimated complexity of the circuit a fitted estimator's ``compile`` keeps: the cheapest of its leaf stages."""
    candidates = getattr(estimator, "_candidates", None) or [(estimator.fhe_model_, None)]
    low_error_only = getattr(estimator, "_low_error_only", None) or [False] * len(candidates)
    # the stages compiled only under a tight error budget are not the default's: the estimate is for the default
    return min(graph_complexity(model.graph) for (model, _), low in zip(candidates, low_error_only) if not low)


def _folds(y: np.ndarray, classifier: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (fit, held out) of the cross-validation."""
    if classifier and np.unique(y, return_counts=True)[1].min() >= FOLDS:
        splitter: Any = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    else:
        splitter = KFold(FOLDS, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros((len(y), 1)), y))


def _choice(candidates: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The cheapest candidate within ``tolerance`` of the best metric; costs within ``COST_TIE`` of the cheapest
    are a tie, won by the higher metric (then the lower cost, then fewer bits)."""
    best = max(c["metric"] for c in candidates)
    eligible = [c for c in candidates if c["metric"] >= best - tolerance - 1e-12]
    cheapest = min(c["cost"] for c in eligible)
    tied = [c for c in eligible if c["cost"] <= cheapest * (1 + COST_TIE)]
    return min(tied, key=lambda c: (-c["metric"], c["cost"], c["n_bits"], c["leaf_bits_"]))


def _search(
    evaluate: Callable[[int, int | None], dict[str, Any]], tolerance: float, progress: bool | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every candidate tried (input bits at the default leaf bits, then fewer leaf bits at the best of those),
    and the best of the first ones."""
    candidates: list[dict[str, Any]] = []
    with progress_bar(progress=progress, desc="n_bits='auto'", unit="candidate", total=len(BITS), leave=False) as bar:
        for bits in BITS:
            candidates.append(evaluate(bits, None))
            bar.update(1)
        first = _choice(candidates, tolerance)
        smaller = [bits for bits in BITS if bits < first["leaf_bits_"]]
        bar.total += len(smaller)
        for bits in smaller:
            candidates.append(evaluate(first["n_bits"], bits))
            bar.update(1)
    return candidates, first


def choose_bits(
    estimator: Any, X: np.ndarray, y: np.ndarray, sample_weight: Any = None, progress: bool | None = None
) -> tuple[int, int | None, dict[str, Any]]:
    """(n_bits, leaf_bits, report) for ``estimator`` (whose ``n_bits`` is "auto") on ``X``, ``y``; ``leaf_bits``
    None: the estimator's default leaf bits at ``n_bits``.

    ``report``: the float model's cross-validated metric, the ``criterion``, the ``target`` (the best
    candidate's metric less the tolerance), ``candidates`` (each tried ``{"n_bits", "leaf_bits" (None:
    the default), "leaf_bits_" (as fitted), "metric", "cost"}``, ``cost`` from :func:`circuit_cost`), the
    ``chosen`` one, and the metric by input bits (``"n_bits"``, at the default leaf bits) and by leaf
    bits (``"leaf_bits"``, at the chosen input bits). ``progress``: a bar over the candidates (None: on a terminal or in a notebook).
    The internal fits and predictions warn about nothing (:class:`~veilml.quantization.RangeWarningScope`).
    """
    start = time.perf_counter()
    classifier = is_classifier(estimator)
    metric = accuracy_score if classifier else r2_score
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
        tolerance, criterion, float_score = AGREEMENT_TOLERANCE, "agreement with the float model", 1.0
    else:
        tolerance = TOLERANCE["classification" if classifier else "regression"]
        criterion, float_score = "metric", reference

    def agreement_score(held: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> float:
        """Share of rows with the float model's label, or 1 - MSE to its predictions / variance of y."""
        if classifier:
            return float(np.mean(ours == theirs))
        return float(1.0 - np.mean((ours - theirs) ** 2) / max(float(np.var(y[held])), 1e-300))

    def evaluate(n_bits: int, leaf_bits: int | None) -> dict[str, Any]:
        scores, costs, used = [], [], []
        for (fit, held), theirs in zip(folds, reference_predictions):
            candidate = clone(estimator).set_params(n_bits=n_bits, leaf_bits=leaf_bits)
            candidate.fit(X[fit], y[fit], sample_weight=weights[fit])
            ours = candidate.predict(X[held])
            scores.append(agreement_score(held, ours, theirs) if agreement else metric(y[held], ours))
            costs.append(circuit_cost(candidate))
            used.append(candidate.leaf_bits_)
        # leaf_bits None: the estimator's default (value stages scale the leaves to the sum's width), not one number
        result = {"n_bits": n_bits, "leaf_bits": leaf_bits, "leaf_bits_": int(max(used))}
        result.update(metric=float(np.mean(scores)), cost=float(np.mean(costs)))
        logger.debug("n_bits='auto': %s", result)
        return result

    with RangeWarningScope(silent=True):  # the folds' held-out rows are no call of the user's
        candidates, first = _search(evaluate, tolerance, progress)
    chosen = _choice(candidates, tolerance)
    report: dict[str, Any] = {
        "float": float_score,
        "target": max(c["metric"] for c in candidates) - tolerance,
        "criterion": criterion,
        "float_metric": reference,
        "folds": FOLDS,
        "candidates": candidates,
        "chosen": chosen,
        "n_bits": {c["n_bits"]: c["metric"] for c in candidates[: len(BITS)]},
        "leaf_bits": {c["leaf_bits_"]: c["metric"] for c in candidates if c["n_bits"] == first["n_bits"]},
    }
    logger.info(
        "n_bits='auto': n_bits=%d, leaf_bits=%d of %d candidates in %.2f s (%s %.4f, estimated complexity %.3g)",
        chosen["n_bits"], chosen["leaf_bits_"], len(candidates), time.perf_counter() - start, criterion, chosen["metric"], chosen["cost"],
    )  # fmt: skip
    return chosen["n_bits"], chosen["leaf_bits"], report
