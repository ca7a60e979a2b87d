"""Shared fixtures: data that ships with scikit-learn, and a fast test configuration."""

from __future__ import annotations

import faulthandler
import os
import warnings

import numpy as np
import pytest
from requires import strict
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from veilml.compiler import Configuration

# scripts/test.sh names a file: a native crash of the test process writes every thread's stack there
# (pytest's own faulthandler writes to a stderr that its capture may hold when the process dies). It is
# enabled again before every test: a native library loaded by the tests (most likely LLVM, in concrete's compiler) installs its own
# SIGSEGV handlers, whose report would go to the captured stderr.
_FAULT_LOG = open(os.environ["VEILML_FAULT_LOG"], "a") if os.environ.get("VEILML_FAULT_LOG") else None  # noqa: SIM115


def pytest_runtest_setup(item) -> None:
    if _FAULT_LOG is not None:
        faulthandler.disable()  # enable() alone keeps whatever handler replaced faulthandler's
        faulthandler.enable(file=_FAULT_LOG, all_threads=True)


# Skips that are legitimate on a CPU-only CI machine, by a fragment of their reason. Any other skip
# (a missing extra, a feature that is not there) fails the run under CI; these are named and counted.
ALLOWED_SKIPS = {
    "can use a GPU here": "the CPU-only error path of device='cuda' cannot be checked on a GPU machine",
    "SCIPY_ARRAY_API is not set": "scikit-learn's array-API checks: veilml's estimators take numpy arrays",
}
_skips: dict[str, list[str]] = {"allowed": [], "unexpected": []}


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        kind = "allowed" if any(fragment in reason for fragment in ALLOWED_SKIPS) else "unexpected"
        _skips[kind].append(f"{report.nodeid}: {reason}")


#: the tiers a local run leaves out unless asked (``-m``), and that CI (strict) always runs
SLOW_TIERS = ("execute", "notebook", "all_families")
_left_out: list[int] = []


def pytest_collection_modifyitems(config, items) -> None:
    """A plain ``pytest`` is the fast tier: the execute, notebook and all_families tiers are left out.
    ``scripts/test.sh`` (``VEILML_ALL_TIERS=1``) and CI (``VEILML_STRICT_TESTS=1`` or ``CI``) run every tier."""
    if strict() or os.environ.get("VEILML_ALL_TIERS") or config.getoption("markexpr"):
        return
    kept = [item for item in items if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        _left_out.append(len(items) - len(kept))
        items[:] = kept


def pytest_runtest_logreport(report) -> None:
    _record_skip(report)


def pytest_collectreport(report) -> None:
    _record_skip(report)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    if strict() and _skips["unexpected"] and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    write = terminalreporter.write_line
    if _left_out:
        write(
            f"fast tier: {_left_out[0]} tests of the {', '.join(SLOW_TIERS)} tiers left out; every tier: "
            "bash scripts/test.sh (or VEILML_ALL_TIERS=1), or choose with -m, e.g. -m execute"
        )
    if _skips["allowed"]:
        write(f"skips allowed on this machine: {len(_skips['allowed'])}")
        for line in _skips["allowed"]:
            write(f"  {line}")
    if _skips["unexpected"]:
        verdict = "FAIL the run (CI)" if strict() else "would fail under CI"
        write(f"unexpected skips: {len(_skips['unexpected'])} ({verdict})", red=True, bold=True)
        for line in _skips["unexpected"]:
            write(f"  {line}", red=True)


@pytest.fixture(scope="session")
def key_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("keycache")


@pytest.fixture(scope="session")
def test_config(key_cache) -> Configuration:
    """Default security, with concrete's key cache so repeated circuits skip keygen (tests only)."""
    return Configuration(insecure_key_cache=key_cache)


@pytest.fixture(scope="session")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


@pytest.fixture(scope="session")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


@pytest.fixture(scope="session")
def compiled_cancer_tree(cancer, test_config):
    from veilml import DecisionTreeClassifier

    X_train, X_test, y_train, y_test = cancer
    model = DecisionTreeClassifier(max_depth=5, n_bits=6, random_state=0).fit(X_train, y_train)
    return model.compile(X_train, test_config)


@pytest.fixture
def no_clip_warning():
    """Silence the (expected) clipping warning on held-out rows."""
    with warnings.catch_warnings():
        from veilml.quantization import QuantizationRangeWarning

        warnings.simplefilter("ignore", QuantizationRangeWarning)
        yield


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
