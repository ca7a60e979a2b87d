"""A Pipeline of numeric preprocessing and a veilml estimator: compiled, saved with its preprocessing as data, served."""

import json

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, PolynomialFeatures, RobustScaler, StandardScaler

import veilml
from veilml.models.trees.pipeline import UnsupportedStepError, preprocessing_of
from veilml.runtime.manifest import write_manifest
from veilml.runtime.preprocessing import FeaturePreprocessing
from veilml.runtime.security import InsecureParametersError
from veilml.serving.bundle import CLIENT_FORMAT, ModelClient, ModelServer


@pytest.fixture(scope="module")
def data(cancer):
    X_train, X_test, y_train, _ = cancer
    return X_train[:, :4], y_train, X_test[:30, :4]


@pytest.fixture(scope="module")
def pipe(data, test_config):
    X, y, _ = data
    pipe = make_pipeline(StandardScaler(), veilml.DecisionTreeClassifier(max_depth=3, n_bits=4, random_state=0)).fit(X, y)
    return veilml.compile_pipeline(pipe, X, test_config)


@pytest.fixture(scope="module")
def bundle(pipe, tmp_path_factory):
    return veilml.save_pipeline(pipe, tmp_path_factory.mktemp("pipeline") / "bundle")


def test_a_saved_pipeline_predicts_as_the_pipeline_from_raw_rows(pipe, bundle, data, no_clip_warning):
    X = data[2]
    expected = pipe.predict(X)  # fhe="disable": the estimator's default
    client = ModelClient(bundle)
    assert client.n_features == 4 and (bundle / "client" / "preprocessing.json").is_file()
    rows = client.prepare(X)
    np.testing.assert_array_equal(rows, pipe[:-1].transform(X))  # the very floats the pipeline quantizes
    np.testing.assert_array_equal(client.codec.predict(pipe[-1].predict_integers(rows)), expected)
    loaded = veilml.load(bundle)
    np.testing.assert_array_equal(loaded.predict(X), expected)
    np.testing.assert_array_equal(loaded.predict(X, fhe="simulate"), pipe.predict(X, fhe="simulate"))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


@pytest.mark.execute
def test_a_served_pipeline_bundle_predicts_as_the_pipeline(pipe, bundle, data, no_clip_warning):
    X = data[2][:3]
    client, server = ModelClient(bundle), ModelServer(bundle)
    key_id = server.register(client.evaluation_keys())
    np.testing.assert_array_equal(client.decrypt(server.run(client.encrypt(X), key_id)), pipe.predict(X, fhe="simulate"))


@pytest.mark.execute
def test_remote_model_through_veilml_serve_takes_raw_rows_as_the_pipeline_does(pipe, bundle, data, tmp_path, no_clip_warning):
    from worker_helpers import CLIWorker

    from veilml.serving.remote_model import RemoteModel

    server = CLIWorker(tmp_path, str(bundle), "--state", str(tmp_path / "state"), name="serve", command="serve")
    try:
        server.wait_ready()
        X = data[2][:3]  # raw rows: the client bundle's preprocessing.json scales them before quantizing
        with RemoteModel(server.url, key_dir=tmp_path / "keys", bundle_dir=tmp_path / "client") as model:
            np.testing.assert_array_equal(model.predict(X), pipe.predict(X, fhe="simulate"))
            np.testing.assert_array_equal(model.predict(X), pipe.predict(X))  # simulate == disable on these rows
    finally:
        server.kill()


def test_column_transformers_and_imputers_compute_what_scikit_learn_computes(data, no_clip_warning):
    X, y, X_test = data
    X = X.copy()
    X[::7, 1] = np.nan
    X[::5, 3] = np.nan
    columns = ColumnTransformer(
        [
            ("std", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), [1, 0]),
            ("minmax", MinMaxScaler(clip=True, feature_range=(-1, 2)), [2]),
            ("robust", RobustScaler(), [0]),
        ],
        remainder=make_pipeline(SimpleImputer(strategy="constant", fill_value=-3.5), MaxAbsScaler()),
    )
    pipe = Pipeline([("columns", columns), ("model", veilml.DecisionTreeClassifier(max_depth=2, n_bits=3))]).fit(X, y)
    again = FeaturePreprocessing.from_json(preprocessing_of(pipe).to_json())  # through its JSON, as a client reads it
    test = np.vstack([X_test, X[:30]])
    test[0, 2] = 1e6  # clipped by MinMaxScaler(clip=True)
    np.testing.assert_array_equal(again.transform(test), pipe[:-1].transform(test))
    assert again.n_features_in == 4 and again.n_features_out == 5


def test_unsupported_steps_are_refused_by_name(data):
    X, y, _ = data
    pipe = make_pipeline(PolynomialFeatures(), veilml.DecisionTreeClassifier(max_depth=2, n_bits=3)).fit(X, y)
    with pytest.raises(UnsupportedStepError, match=r"PolynomialFeatures\(\).*supports StandardScaler, MinMaxScaler"):
        veilml.compile_pipeline(pipe, X)
    pipe = make_pipeline(SimpleImputer(add_indicator=True), veilml.DecisionTreeClassifier(max_depth=2, n_bits=3))
    with pytest.raises(UnsupportedStepError, match="add_indicator"):
        preprocessing_of(pipe.fit(X, y))


def test_a_client_refuses_a_preprocessing_that_does_not_fit_its_model(bundle, tmp_path):
    import shutil

    copy = shutil.copytree(bundle, tmp_path / "copy")
    client = copy / "client"
    document = json.loads((client / "preprocessing.json").read_text())
    document["steps"].append({"kind": "select", "columns": [0, 1]})
    (client / "preprocessing.json").write_text(json.dumps(document))
    manifest = json.loads((client / "manifest.json").read_text())
    facts = {k: manifest[k] for k in ("fingerprint", "n_features", "input_size")}
    write_manifest(client, CLIENT_FORMAT, **facts)  # a consistent manifest: what a hostile server could send
    with pytest.raises(InsecureParametersError, match="preprocessing.json gives 2 features and its codec takes 4"):
        ModelClient(copy)
    document["steps"][-1] = {"kind": "center_scale", "center": [0, 0, 0, 0], "scale": [1, 0, 1, 1]}
    (client / "preprocessing.json").write_text(json.dumps(document))
    write_manifest(client, CLIENT_FORMAT, **facts)
    with pytest.raises(InsecureParametersError, match="scale must not be 0"):
        ModelClient(copy)
