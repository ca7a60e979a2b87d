"""Package-level promises: a light import, the scikit-learn estimator contract."""

import subprocess
import sys

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from veilml import DecisionTreeClassifier, DecisionTreeRegressor


def test_import_is_light_and_fast():
    code = (
        "import sys, time; t = time.perf_counter(); import veilml; t = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'concrete', 'sklearn', 'xgboost', 'transformers') if m in sys.modules]; "
        "print(t, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[1].strip() == "[]", f"import veilml loaded {out[1]}"
    assert float(out[0]) < 1.0


def test_lazy_attributes():
    import veilml

    assert veilml.DecisionTreeClassifier is DecisionTreeClassifier
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        veilml.Nope  # noqa: B018


@parametrize_with_checks(
    [DecisionTreeClassifier(max_depth=4), DecisionTreeRegressor(max_depth=4)],
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)
