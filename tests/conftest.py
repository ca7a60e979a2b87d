"""Shared fixtures: data that ships with scikit-learn, and a fast test configuration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from veilml.compiler import Configuration


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
