"""``n_bits="auto"`` chooses on metric and cost: never a candidate that another tried one beats on both.

The cost is :func:`veilml.models.trees.auto_bits.circuit_cost`, concrete's complexity estimated from the
IR; the ``execute`` tests check it against compiled circuits and run the README's example.
"""

from __future__ import annotations

import numpy as np
import pytest
from requires import require

import veilml
from veilml.models.trees.auto_bits import TOLERANCE, _choice, circuit_cost


def _check_choice(model) -> dict:
    """The report lists each candidate's metric and cost; the chosen one is undominated and within tolerance."""
    report = model.auto_bits_report_
    candidates, chosen = report["candidates"], report["chosen"]
    assert len(candidates) >= 7 and all(np.isfinite(c["metric"]) and c["cost"] > 0 for c in candidates)
    assert (model.n_bits_, model.leaf_bits_) == (chosen["n_bits"], chosen["leaf_bits_"])
    for other in candidates:
        assert not (other["metric"] > chosen["metric"] and other["cost"] < chosen["cost"]), (other, chosen)
    best = max(c["metric"] for c in candidates)
    assert chosen["metric"] >= best - TOLERANCE["classification"] - 1e-12
    assert report["target"] == pytest.approx(best - TOLERANCE["classification"])
    return report


def test_the_choice_is_the_cheapest_within_tolerance_and_a_tie_goes_to_the_metric():
    def c(n, metric, cost):
        return {"n_bits": n, "leaf_bits": None, "leaf_bits_": n, "metric": metric, "cost": cost}

    candidates = [c(2, 0.90, 1.0), c(3, 0.950, 3.0), c(4, 0.948, 2.0), c(5, 0.953, 2.05), c(6, 0.952, 5.0)]
    # within 0.005 of 0.953: 3, 4, 5, 6; 4 is cheapest, 5 costs 2.5 % more (a tie) with a higher metric
    assert _choice(candidates, 0.005)["n_bits"] == 5
    candidates[3]["cost"] = 2.5  # no longer a tie: the cheapest eligible wins
    assert _choice(candidates, 0.005)["n_bits"] == 4


def test_auto_bits_choice_is_not_dominated(cancer):
    X_train, _, y_train, _ = cancer
    model = veilml.DecisionTreeClassifier(max_depth=3, random_state=0, n_bits="auto").fit(X_train, y_train)
    report = _check_choice(model)
    # the cost of the chosen candidate is the estimate of the model's own circuit (refit on all rows)
    assert circuit_cost(model) == pytest.approx(report["chosen"]["cost"], rel=0.5)


@pytest.mark.execute
def test_readme_example_picks_a_circuit_no_costlier_and_no_worse_than_6_bits(cancer):
    require("xgboost", "trees")
    X_train, X_test, y_train, y_test = cancer  # the README's split
    model = veilml.XGBClassifier(n_estimators=20, max_depth=4, n_bits="auto").fit(X_train, y_train)
    _check_choice(model)
    default = veilml.XGBClassifier(n_estimators=20, max_depth=4).fit(X_train, y_train)
    # before: n_bits_=2, leaf_bits_=4, test accuracy 0.930 against 0.972, complexity 8.09e9 against 5.09e9
    assert circuit_cost(model) <= circuit_cost(default)
    assert np.mean(model.predict(X_test) == y_test) >= np.mean(default.predict(X_test) == y_test) - 0.005


@pytest.mark.execute
def test_the_cost_estimate_ranks_circuits_as_concrete_does(cancer):
    require("xgboost", "trees")
    X_train, _, y_train, _ = cancer
    estimated, compiled = [], []
    for n_bits, leaf_bits in ((2, 4), (4, None), (6, None), (3, 2)):
        model = veilml.XGBClassifier(n_estimators=20, max_depth=4, n_bits=n_bits, leaf_bits=leaf_bits).fit(X_train, y_train)
        estimated.append(circuit_cost(model))
        compiled.append(model.compile(X_train).report_.complexity)
    assert np.argsort(estimated).tolist() == np.argsort(compiled).tolist()
    assert np.allclose(estimated, compiled, rtol=0.1), (estimated, compiled)
