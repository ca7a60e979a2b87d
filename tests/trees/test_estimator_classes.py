"""The estimator classes are committed source, generated from the libraries' signatures: each one must
mirror its library as installed, be visible to tools, and load no library when imported."""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from requires import require

import veilml
from veilml.models.trees import estimators
from veilml.models.trees.estimators import VEILML_PARAMS
from veilml.models.trees.families import FAMILIES, library_class

require("xgboost", "trees")
require("lightgbm", "trees")

ROOT = Path(__file__).resolve().parents[2]
RUN_THE_SCRIPT = "run `python scripts/generate_estimators.py` and commit what it writes"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_estimators", ROOT / "scripts" / "generate_estimators.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_signature_mirrors_the_installed_library(name):
    """A library release that adds, removes or changes a parameter fails here, naming it."""
    library = library_class(FAMILIES[name])
    theirs = library().get_params(deep=False)
    parameters = inspect.signature(getattr(estimators, name)).parameters
    ours = {k: p.default for k, p in parameters.items() if p.kind is p.KEYWORD_ONLY and k not in VEILML_PARAMS}
    differences = [
        *(f"{k} is new in {library.__module__}" for k in theirs.keys() - ours.keys()),
        *(f"{k} is gone from {library.__module__}" for k in ours.keys() - theirs.keys()),
        *(
            f"{k}'s default is now {theirs[k]!r}, not {ours[k]!r}"
            for k in theirs.keys() & ours.keys()
            if not _same(theirs[k], ours[k])
        ),
    ]
    assert not differences, f"{name} no longer mirrors {library.__name__}: {'; '.join(sorted(differences))}; {RUN_THE_SCRIPT}"
    assert list(ours) == list(theirs), f"{name} lists its library's parameters in another order; {RUN_THE_SCRIPT}"
    assert list(parameters)[: len(VEILML_PARAMS)] == list(VEILML_PARAMS)
    takes_more = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(library.__init__).parameters.values())
    assert takes_more == any(p.kind is p.VAR_KEYWORD for p in parameters.values()), f"**kwargs differ; {RUN_THE_SCRIPT}"


def test_the_committed_modules_are_what_the_script_writes(generator):
    """Docstrings and layout too: the modules are the script's output, byte for byte."""
    stale = [
        module
        for module, names in generator.modules().items()
        if (ROOT / "src/veilml/models/trees/estimators" / f"{module}.py").read_text() != generator.render_module(module, names)
    ]
    assert not stale, f"estimator modules that differ from the script's output: {stale}; {RUN_THE_SCRIPT}"


def test_every_family_is_exported():
    assert set(estimators.__all__) - {"VEILML_PARAMS"} == set(FAMILIES)
    for name in FAMILIES:
        assert getattr(veilml, name) is getattr(estimators, name)
        assert getattr(estimators, name).__qualname__ == name


def test_positional_arguments_get_scikit_learns_message():
    from sklearn.tree import DecisionTreeClassifier

    with pytest.raises(TypeError) as theirs:
        DecisionTreeClassifier("gini")
    for name in ("DecisionTreeClassifier", "XGBClassifier", "LGBMRegressor"):
        with pytest.raises(TypeError, match=re.escape(f"{name}.__init__() takes 1 positional argument but 2 were given")) as ours:
            getattr(veilml, name)(6)
        assert str(ours.value).replace(name, "?") == str(theirs.value).replace("DecisionTreeClassifier", "?")


def test_the_classes_load_no_library_until_fitted():
    code = (
        "import sys, veilml; model = veilml.XGBClassifier(n_estimators=3, n_bits=4); veilml.LGBMRegressor(); "
        "print(' '.join(sorted(m for m in ('xgboost', 'lightgbm', 'treelite') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [], f"making an estimator loaded {out.split()}: the library must load only when a model is fitted"
