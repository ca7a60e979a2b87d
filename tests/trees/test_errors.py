"""Bad input gets a clear error that names the fix."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from veilml import DecisionTreeClassifier
from veilml.quantization import QuantizationRangeWarning
from veilml.runtime import NotCompiledError


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    return DecisionTreeClassifier(max_depth=3).fit(X, X[:, 0] > 0), X


def test_wrong_number_of_features(fitted):
    model, X = fitted
    with pytest.raises(
        ValueError, match="X has 3 features, but DecisionTreeClassifier is expecting 4 features as input; pass the same columns"
    ):
        model.predict(X[:, :3])


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN in column.*impute"), (np.inf, "infinite values.*replace or clip")])
def test_nan_and_inf(fitted, bad, match):
    model, X = fitted
    X = X.copy()
    X[3, 2] = bad
    with pytest.raises(ValueError, match=match):
        model.predict(X)
    with pytest.raises(ValueError, match=match):
        DecisionTreeClassifier().fit(X, X[:, 0] > 0)


def test_non_numeric_dtype(fitted):
    model, _ = fitted
    with pytest.raises(TypeError, match="must be numeric.*OrdinalEncoder"):
        model.predict(np.array([["a", "b", "c", "d"]]))


def test_one_dimensional_input(fitted):
    model, X = fitted
    with pytest.raises(ValueError, match=r"Reshape your data: X.reshape\(1, -1\)"):
        model.predict(X[0])


def test_predict_before_fit():
    with pytest.raises(NotFittedError, match="not fitted yet. Call 'fit'"):
        DecisionTreeClassifier().predict(np.zeros((1, 4)))


@pytest.mark.parametrize("mode", ["simulate", "execute"])
def test_fhe_before_compile(fitted, mode):
    model, X = fitted
    with pytest.raises(NotCompiledError, match="call 'compile\\(X\\)'"):
        model.predict(X, fhe=mode)


def test_unknown_fhe_mode(fitted):
    model, X = fitted
    with pytest.raises(ValueError, match="fhe must be one of"):
        model.predict(X, fhe="encrypt")


def test_out_of_range_values_are_clipped_with_a_warning(fitted):
    model, X = fitted
    far = X[:2] * 1000
    with pytest.warns(QuantizationRangeWarning, match="clipped"):
        clipped = model.predict_integers(far)
    edge = np.clip(far, X.min(axis=0), X.max(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(clipped, model.predict_integers(edge))  # clipping == the range's edge


def test_bad_hyper_parameters():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="'n_bits' parameter of DecisionTreeClassifier must be"):
        DecisionTreeClassifier(n_bits=1).fit(X, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="'encoding' parameter"):
        DecisionTreeClassifier(encoding="onehot").fit(X, [0, 1, 0, 1])


def test_unsupported_model():
    from sklearn.linear_model import LogisticRegression

    from veilml.models.trees import UnsupportedModelError, to_ensemble

    with pytest.raises(
        UnsupportedModelError, match="no converter for .*LogisticRegression; supported models: DecisionTreeClassifier"
    ):
        to_ensemble(LogisticRegression())


def test_configuration_errors():
    from veilml.compiler import Configuration

    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        Configuration(device="tpu")
    with pytest.raises(TypeError, match="unknown Configuration fields \\['p_eror'\\]"):
        Configuration().fork(p_eror=0.1)
    with pytest.raises(ValueError, match="global_p_error must be in"):
        Configuration(global_p_error=2.0)


def test_cuda_without_gpu_support_fails_clearly(fitted):
    from concrete import compiler

    from veilml.compiler import GPUUnavailableError

    model, X = fitted
    if compiler.check_gpu_enabled() and compiler.check_gpu_available():
        pytest.skip("this concrete-python can use a GPU here")
    with pytest.raises(GPUUnavailableError, match="device='cuda'.*use device='cpu'"):
        model.compile(X, device="cuda")
