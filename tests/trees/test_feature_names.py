"""Column names, as scikit-learn keeps them: recorded in fit, checked by every call that takes X and
by the client bundle, so reordered, missing or renamed columns fail loudly instead of predicting
wrong answers."""

import json
import warnings

import numpy as np
import pytest
from requires import require
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.tree import DecisionTreeClassifier as SklearnTree
from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

import veilml
from veilml.quantization import QuantizationRangeWarning
from veilml.runtime.codec import MAX_FEATURE_NAME_LENGTH, ClientCodec
from veilml.serving.bundle import ModelClient

pd = require("pandas", "test")

N_FEATURES = 6
NAME_MISMATCH = "The feature names should match those that were passed during fit"
NO_NAMES = "X does not have valid feature names"


def _names_warnings_are_errors() -> None:
    """Inside ``warnings.catch_warnings()``: scikit-learn's two feature-name warnings raise."""
    warnings.filterwarnings("error", message=NO_NAMES, category=UserWarning)
    warnings.filterwarnings("error", message="X has feature names", category=UserWarning)


@pytest.fixture(scope="module")
def frame():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X.iloc[:, :N_FEATURES], y.to_numpy()


@pytest.fixture(scope="module")
def tree(frame):
    X, y = frame
    return veilml.DecisionTreeClassifier(max_depth=3, n_bits=4, random_state=0).fit(X, y)


def _bad_frames(X):
    """Reordered, missing and renamed columns: each refused by scikit-learn."""
    return {
        "reordered": X[X.columns[::-1]],
        "missing": X.iloc[:, 1:],
        "renamed": X.rename(columns={X.columns[0]: "something else"}),
    }


def test_fit_records_the_names_and_the_codec_carries_them(tree, frame):
    X, _ = frame
    assert isinstance(tree.feature_names_in_, np.ndarray) and tree.feature_names_in_.dtype == object
    assert tree.feature_names_in_.tolist() == X.columns.tolist()
    assert tree.fhe_model_.codec.feature_names == tuple(X.columns)


@pytest.mark.parametrize("kind", ["reordered", "missing", "renamed"])
def test_other_columns_are_refused_by_every_method_with_scikit_learns_error(tree, frame, kind):
    X, y = frame
    bad = _bad_frames(X)[kind]
    reference = SklearnTree(max_depth=3, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="feature names") as theirs:
        reference.predict(bad)
    for method in (tree.predict, tree.predict_proba, tree.decision_scores, tree.predict_integers, tree.compile):
        with pytest.raises(ValueError, match=NAME_MISMATCH) as ours:
            method(bad)
        assert str(ours.value) == str(theirs.value), method.__name__


def test_arrays_still_predict_with_scikit_learns_warning(tree, frame):
    X, _ = frame
    with pytest.warns(UserWarning, match=f"{NO_NAMES}, but DecisionTreeClassifier was fitted with feature names"):
        from_array = tree.predict(X.to_numpy())
    with warnings.catch_warnings():
        _names_warnings_are_errors()  # the right columns: no warning
        np.testing.assert_array_equal(from_array, tree.predict(X))


def test_an_ensemble_records_and_checks_the_names(frame):
    X, y = frame
    model = veilml.XGBClassifier(n_estimators=3, max_depth=2, n_bits=4, n_jobs=1).fit(X, y)
    assert model.feature_names_in_.tolist() == X.columns.tolist()
    assert model.fhe_model_.codec.feature_names == tuple(X.columns)
    with pytest.raises(ValueError, match="Feature names must be in the same order as they were in fit"):
        model.predict(X[X.columns[::-1]])
    with pytest.warns(UserWarning, match=NO_NAMES):
        np.testing.assert_array_equal(model.predict(X), model.predict(X.to_numpy()))


@pytest.mark.parametrize(
    "estimator",
    [
        veilml.DecisionTreeClassifier(max_depth=3, n_bits=4),
        veilml.RandomForestRegressor(n_estimators=3, max_depth=2, n_bits=4),
    ],
)
def test_scikit_learns_column_name_check(estimator):
    check_dataframe_column_names_consistency(type(estimator).__name__, estimator)


def test_refit_without_names_forgets_them(frame):
    X, y = frame
    model = veilml.DecisionTreeClassifier(max_depth=2, n_bits=4).fit(X, y).fit(X.to_numpy(), y)
    assert not hasattr(model, "feature_names_in_")
    assert model.fhe_model_.codec.feature_names is None
    with pytest.warns(UserWarning, match="X has feature names, but DecisionTreeClassifier was fitted without"):
        model.predict(X)


def test_clone_and_model_selection_on_frames(tree, frame):
    X, y = frame
    assert not hasattr(clone(tree), "feature_names_in_")
    assert clone(tree).get_params() == tree.get_params()
    with warnings.catch_warnings():
        _names_warnings_are_errors()  # the folds keep the frame's names
        warnings.simplefilter("ignore", QuantizationRangeWarning)  # held-out rows beyond a fold's range
        scores = cross_val_score(veilml.DecisionTreeClassifier(max_depth=2, n_bits=4), X, y, cv=3)
        search = GridSearchCV(veilml.DecisionTreeClassifier(n_bits=4), {"max_depth": [1, 2]}, cv=2).fit(X, y)
    assert scores.min() > 0.8
    assert search.best_estimator_.feature_names_in_.tolist() == X.columns.tolist()


def test_from_fitted_keeps_the_library_models_names(frame):
    X, y = frame
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y)
    for model in (
        veilml.RandomForestClassifier.from_fitted(forest, n_bits=5),
        veilml.RandomForestClassifier.from_fitted(forest, X, n_bits=5),
    ):
        assert model.feature_names_in_.tolist() == X.columns.tolist()
        assert model.fhe_model_.codec.feature_names == tuple(X.columns)
        with pytest.raises(ValueError, match=NAME_MISMATCH):
            model.predict(X.iloc[:, ::-1])
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        veilml.RandomForestClassifier.from_fitted(forest, X.iloc[:, ::-1], n_bits=5)
    unnamed = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X.to_numpy(), y)
    assert not hasattr(veilml.RandomForestClassifier.from_fitted(unnamed, n_bits=5), "feature_names_in_")


# --------------------------------------------------------------------------------- the client side
def test_codec_names_round_trip_and_old_codecs_read_as_none(tree, frame):
    X, _ = frame
    codec = tree.fhe_model_.codec
    again = ClientCodec.from_json(codec.to_json())
    assert again.feature_names == tuple(X.columns)
    old = codec.to_dict()
    del old["feature_names"]  # a codec saved before names were kept
    assert ClientCodec.from_dict(old).feature_names is None
    with pytest.warns(UserWarning, match="X has feature names, but ModelClient was fitted without feature names"):
        ClientCodec.from_dict(old).check_rows(X)


@pytest.mark.parametrize(
    "names",
    [
        [f"f{i}" for i in range(N_FEATURES + 1)],  # more names than features
        ["x" * (MAX_FEATURE_NAME_LENGTH + 1)] + [f"f{i}" for i in range(N_FEATURES - 1)],
        list(range(N_FEATURES)),
        "abcdef",
        [f"f{i}" for i in range(N_FEATURES - 1)],  # fewer: not one per feature
    ],
)
def test_a_hostile_codec_cannot_carry_unbounded_names(tree, names):
    document = tree.fhe_model_.codec.to_dict()
    document["feature_names"] = names
    with pytest.raises(ValueError, match="not a veilml client codec.*feature_names"):
        ClientCodec.from_json(json.dumps(document))


def test_codec_check_rows_is_the_estimators_check(tree, frame):
    X, _ = frame
    codec = tree.fhe_model_.codec
    np.testing.assert_array_equal(codec.check_rows(X), X.to_numpy(dtype=np.float64))
    for bad in _bad_frames(X).values():
        with pytest.raises(ValueError) as ours:
            codec.check_rows(bad)
        with pytest.raises(ValueError) as theirs:
            tree.predict(bad)
        assert str(ours.value) == str(theirs.value)
    with pytest.warns(UserWarning, match=f"{NO_NAMES}, but ModelClient was fitted with feature names"):
        codec.check_rows(X.to_numpy())
    with pytest.raises(ValueError, match="NaN in column"):  # veilml's own checks still apply
        codec.check_rows(X.assign(**{X.columns[2]: np.nan}))


def test_the_bundles_client_refuses_other_columns(tree, frame, test_config, tmp_path):
    X, _ = frame
    tree.compile(X, test_config)
    client = ModelClient(tree.save(tmp_path / "bundle"))
    assert client.codec.feature_names == tuple(X.columns)
    for bad in _bad_frames(X).values():
        with pytest.raises(ValueError, match=NAME_MISMATCH):
            client.encrypt(bad.iloc[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationRangeWarning)
        assert isinstance(client.encrypt(X.iloc[:2]), bytes)
        with pytest.warns(UserWarning, match=NO_NAMES):  # headerless data (the CLI's CSV / npy) still works
            assert isinstance(client.encrypt(X.to_numpy()[:1]), bytes)
    # RemoteModel checks the frame it is given, before a row is encrypted or sent
    import io
    import zipfile

    import httpx

    from veilml.runtime.envelope import specs_fingerprint
    from veilml.serving.remote_model import RemoteModel

    client_dir = tmp_path / "bundle" / "client"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(client_dir.iterdir()):
            archive.write(path, path.name)
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/bundle/client":
            return httpx.Response(200, content=buffer.getvalue())
        fingerprint = specs_fingerprint((client_dir / "client.specs.json").read_bytes())
        return httpx.Response(200, json={"status": "ok", "fingerprint": fingerprint, "max_rows": 16})

    with RemoteModel("http://server", transport=httpx.MockTransport(answer), retries=0) as remote:
        for bad in _bad_frames(X).values():
            with pytest.raises(ValueError, match=NAME_MISMATCH):
                remote.predict(bad.iloc[:2])
    assert "/keys" not in sent and "/predict" not in sent
