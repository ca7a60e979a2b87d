"""``predict(X, fhe="execute")`` on the batched path or the TFHE path: chosen by the number of rows, or forced."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes

from veilml.models.trees.batch import BATCH_MIN_ROWS, BatchScorer, use_batch
from veilml.models.trees.estimators import DecisionTreeClassifier, GradientBoostingRegressor
from veilml.runtime.model import NotCompiledError

pytest.importorskip("tenseal")

X, Y = load_breast_cancer(return_X_y=True)
X3 = X[:, :3]  # three features: 189 input bits, one 8,192-slot batch in a second or two


@pytest.fixture(scope="module")
def tree():
    return DecisionTreeClassifier(n_bits=6, max_depth=3, random_state=0).fit(X3, Y)


def test_a_large_table_takes_the_batched_path_and_equals_disable_on_every_row(tree, monkeypatch):
    """569 rows, no compile(): every method of fhe="execute" goes through the batched path and equals disable."""
    assert tree.fhe_model_.compiled is None and len(X3) >= BATCH_MIN_ROWS
    calls: list[int] = []
    scored = BatchScorer.checked_integers
    monkeypatch.setattr(BatchScorer, "checked_integers", lambda self, rows: calls.append(len(rows)) or scored(self, rows))
    for method in ("predict", "predict_proba", "decision_scores"):
        np.testing.assert_array_equal(getattr(tree, method)(X3, fhe="execute"), getattr(tree, method)(X3, fhe="disable"))
    assert calls == [len(X3)] * 3
    assert tree._batch_scorer() is tree._batch_scorer()  # its programs are made once


def test_a_regressor_takes_it_too():
    Xd, yd = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_bits=6, n_estimators=4, max_depth=2, random_state=0).fit(Xd[:, :3], yd)
    np.testing.assert_array_equal(model.predict(Xd[:, :3], fhe="execute"), model.predict(Xd[:, :3], fhe="disable"))


def test_the_path_is_chosen_by_rows_and_can_be_forced(tree, monkeypatch):
    few = X3[:5]
    np.testing.assert_array_equal(tree.predict(few, fhe="execute", fhe_path="batch"), tree.predict(few))
    with pytest.raises(NotCompiledError, match=r"5 rows go through the TFHE path.*compile\(X\).*fhe_path='batch'"):
        tree.predict(few, fhe="execute")  # auto, few rows, not compiled: the error names both ways out
    with pytest.raises(NotCompiledError, match="needs a compiled model"):
        tree.predict(X3, fhe="execute", fhe_path="tfhe")  # forced TFHE on a large table: compile first
    with pytest.raises(ValueError, match="pass fhe='execute' with it"):
        tree.predict(X3, fhe_path="batch")
    with pytest.raises(ValueError, match="fhe_path must be one of"):
        tree.predict(X3, fhe="execute", fhe_path="bfv")
    with pytest.raises(ValueError, match="TFHE circuit's integers"):
        tree.predict_integers(X3, "execute", fhe_path="batch")
    monkeypatch.setattr(tree.fhe_model_, "compiled", object())  # as if compiled: the crossover decides
    assert not use_batch(tree, BATCH_MIN_ROWS - 1, "execute", "auto")
    assert use_batch(tree, BATCH_MIN_ROWS, "execute", "auto")
    assert not use_batch(tree, 10**6, "execute", "tfhe") and use_batch(tree, 1, "execute", "batch")
    assert not use_batch(tree, 10**6, "simulate", "auto")


def test_the_estimator_contract_is_unchanged(tree):
    """The path is a keyword of the calls, not a parameter: get_params, set_params and clone are as before."""
    tree.predict(X3, fhe="execute")
    assert "fhe_path" not in tree.get_params()
    copy = clone(tree)
    assert copy.get_params() == tree.get_params() and not hasattr(copy, "_batch")


def test_without_the_bfv_extra_the_error_names_it(tree, monkeypatch):
    """The batched path needs tenseal, numba and zstandard (``veilml[bfv]``), not in veilml's core: an install
    without them gets an ImportError that names the extra, never a failure deep in SEAL's wrapper."""
    import veilml.models.trees.batch as batch
    import veilml.runtime.batch.plan as plan

    monkeypatch.setattr(plan, "batch_available", lambda: False)
    monkeypatch.setattr(batch, "batch_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'veilml\[bfv\]'"):
        tree.predict(X3, fhe="execute")  # a large table, no compiled circuit to fall back on
    with pytest.raises(ImportError, match=r"veilml\[bfv\]"):
        tree.predict(X3[:5], fhe="execute", fhe_path="batch")
