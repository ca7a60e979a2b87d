"""Package-level promises: a light import, the scikit-learn estimator contract."""

import subprocess
import sys

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from veilml import DecisionTreeClassifier, DecisionTreeRegressor


def test_import_is_light():
    """`import veilml` loads only the standard library and veilml itself (no timing: deterministic)."""
    code = (
        "import sys; before = set(sys.modules); import veilml; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert "veilml" in loaded
    third_party = {name for name in loaded - {"veilml"} if name not in sys.stdlib_module_names}
    assert not third_party, f"import veilml loaded {sorted(third_party)}: import them lazily where used"


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
