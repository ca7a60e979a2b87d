"""One ``QuantizationRangeWarning`` per public call, at the caller's line; progress bars and timing logs."""

from __future__ import annotations

import logging
import re
import sys
import types
import warnings

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

import veilml
from veilml.quantization import QuantizationRangeWarning
from veilml.runtime import FHEModel
from veilml.runtime import progress as progress_module


@pytest.fixture(scope="module")
def fitted(cancer):
    X_train, X_test, y_train, y_test = cancer
    return veilml.DecisionTreeClassifier(max_depth=3, random_state=0, n_bits=4).fit(X_train, y_train), X_train, y_train


def _far(X: np.ndarray, rows: int) -> np.ndarray:
    far = X[:5].copy()
    far[:rows] *= 1000  # every positive feature of these rows beyond the calibrated range
    return far


def _range_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, QuantizationRangeWarning)]


# ---------------------------------------------------------------------------------------- warnings
def test_one_predict_warns_once_at_the_callers_line(fitted):
    model, X, _ = fitted
    far = _far(X, 2)
    clipped = int(np.count_nonzero(far[:2] > X.max(axis=0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(far)
    found = _range_warnings(caught)
    assert len(found) == 1  # predict -> predict_proba -> decision_scores -> encode: one warning
    assert found[0].filename == __file__
    assert found[0].message.count == clipped


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_scores", "predict_integers", "score"])
def test_each_public_call_warns_once_with_a_stable_message(fitted, method):
    model, X, y = fitted
    messages, counts = [], []
    for rows in (1, 3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = (_far(X, rows), y[:5]) if method == "score" else (_far(X, rows),)
            getattr(model, method)(*args)
        found = _range_warnings(caught)
        assert len(found) == 1 and found[0].filename == __file__
        messages.append(str(found[0].message))
        counts.append(found[0].message.count)
    assert messages[0] == messages[1] and not re.search(r"\d", messages[0])
    assert counts[0] < counts[1]


def test_the_once_filter_collapses_repeated_calls(fitted):
    model, X, _ = fitted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("once")
        for rows in (1, 2, 3):
            model.predict(_far(X, rows))
    assert len(_range_warnings(caught)) == 1


def test_auto_bits_internal_fits_do_not_warn(cancer):
    X_train, _, y_train, _ = cancer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        veilml.DecisionTreeClassifier(max_depth=3, random_state=0, n_bits="auto").fit(X_train, y_train)
    assert _range_warnings(caught) == []


def test_cross_validation_points_at_the_users_line(cancer):
    X_train, _, y_train, _ = cancer
    model = veilml.DecisionTreeClassifier(max_depth=3, random_state=0, n_bits=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cross_val_score(model, X_train, y_train, cv=3)
    found = _range_warnings(caught)  # before: 30 from quantizer.py, each with its own count in the text
    assert 1 <= len(found) <= 3 and {w.filename for w in found} == {__file__}  # at most one per scored fold
    assert len({str(w.message) for w in found}) == 1


# ---------------------------------------------------------------------------------------- progress
def test_progress_true_draws_a_bar_and_false_draws_none(cancer, capsys):
    X_train, _, y_train, _ = cancer
    X_train, y_train = X_train[:150], y_train[:150]
    veilml.DecisionTreeClassifier(max_depth=2, random_state=0, n_bits="auto").fit(X_train, y_train, progress=True)
    assert "n_bits='auto'" in capsys.readouterr().err
    veilml.DecisionTreeClassifier(max_depth=2, random_state=0, n_bits="auto").fit(X_train, y_train, progress=False)
    assert capsys.readouterr().err == ""


def test_compile_draws_a_bar_when_asked_and_logs_its_time(fitted, capsys, caplog, monkeypatch):
    model, X, _ = fitted
    compiled = []

    def compile_quickly(self, X, configuration=None):  # concrete's compilation is the execute tier's
        compiled.append(self)
        return types.SimpleNamespace(report=types.SimpleNamespace(complexity=float(len(compiled))))

    monkeypatch.setattr(FHEModel, "compile", compile_quickly)
    with caplog.at_level(logging.INFO, logger="veilml"):
        model.compile(X, progress=True)
    assert len(compiled) == len(model._candidates) and model.report_.complexity == 1.0
    assert "FHE compile" in capsys.readouterr().err
    records = [r for r in caplog.records if r.name.startswith("veilml") and "FHE compile" in r.getMessage()]
    assert len(records) == 1 and re.search(r"FHE compile: \d+\.\d\d s", records[0].getMessage())
    model.compile(X, progress=False)
    assert capsys.readouterr().err == ""


def test_auto_progress_follows_the_terminal_or_the_notebook(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert not progress_module.show_progress(None) and progress_module.show_progress(True)
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert progress_module.show_progress(None) and not progress_module.show_progress(False)
    monkeypatch.setattr(sys, "stderr", Stream(False))
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert progress_module.show_progress(None)  # a Jupyter kernel: stderr is no tty, the widget is shown


@pytest.mark.execute
def test_execute_draws_bars_for_keygen_and_rows_and_logs_them(cancer, test_config, capsys, caplog):
    X_train, X_test, y_train, _ = cancer
    model = veilml.DecisionTreeClassifier(max_depth=2, random_state=0, n_bits=3).fit(X_train, y_train)
    with caplog.at_level(logging.INFO, logger="veilml"):
        model.compile(X_train, test_config)
        model.predict(X_test[:2], fhe="execute", progress=True)
    err = capsys.readouterr().err
    assert "FHE execute" in err and "FHE keygen" in err
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("veilml")]
    assert any(re.search(r"FHE compile: \d+\.\d\d s, \d circuit\(s\), kept complexity", m) for m in messages)
    assert any(re.search(r"FHE keygen: \d+\.\d\d s", m) for m in messages)
    assert any(re.search(r"FHE execute: 2 row\(s\) in \d+\.\d\d s", m) for m in messages)
    model.predict(X_test[:2], fhe="execute", progress=False)
    assert capsys.readouterr().err == ""
