"""Compiled estimators survive pickle and joblib (the circuit compiled again), and veilml.load reads a saved bundle back."""

import json
import pickle
import shutil

import joblib
import numpy as np
import pytest

import veilml
from veilml.runtime.envelope import specs_fingerprint
from veilml.runtime.manifest import ArtifactError
from veilml.runtime.model import NotCompiledError
from veilml.runtime.restore import specs_of


@pytest.fixture(scope="module")
def data(cancer):
    X_train, X_test, y_train, _ = cancer
    return X_train[:, :4], y_train, X_test[:20, :4]


def _fitted(name, data):
    X, y, _ = data
    if name == "xgb":
        return veilml.XGBClassifier(n_estimators=3, max_depth=2, n_bits=3).fit(X, y)
    return veilml.DecisionTreeClassifier(max_depth=3, n_bits=4, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def models(data, test_config):
    """Each compiled model, made once for the module (compiling and saving take seconds)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _fitted(name, data).compile(data[0], test_config)
        return cache[name]

    return get


@pytest.fixture(params=["tree", "xgb"])
def compiled(request, models):
    return models(request.param)


@pytest.fixture(scope="module")
def tree(models):
    return models("tree")


def _assert_same_predictions(a, b, X):
    for fhe in ("disable", "simulate"):
        np.testing.assert_array_equal(a.predict(X, fhe=fhe), b.predict(X, fhe=fhe))
        np.testing.assert_array_equal(a.predict_proba(X, fhe=fhe), b.predict_proba(X, fhe=fhe))
        np.testing.assert_array_equal(a.predict_integers(X, fhe=fhe), b.predict_integers(X, fhe=fhe))


def test_pickle_round_trip_gives_the_same_circuit_and_predictions(compiled, data, no_clip_warning):
    again = pickle.loads(pickle.dumps(compiled))
    assert again is not compiled and again.fhe_model_.compiled is not None
    # concrete compiled the very same circuit again (same public specs, so keys and ciphertexts fit it)
    fingerprint = specs_fingerprint(specs_of(compiled.fhe_model_.compiled.circuit))
    assert specs_fingerprint(specs_of(again.fhe_model_.compiled.circuit)) == fingerprint
    assert again.report_ == compiled.report_ and repr(again.get_params()) == repr(compiled.get_params())  # NaN == NaN in repr
    _assert_same_predictions(compiled, again, data[2])
    # the live estimator was not stripped by pickling it
    assert compiled.fhe_model_.compiled is not None


def test_joblib_round_trip(tree, data, tmp_path, no_clip_warning):
    joblib.dump(tree, tmp_path / "model.joblib")
    _assert_same_predictions(tree, joblib.load(tmp_path / "model.joblib"), data[2])


def test_a_fitted_model_pickles_uncompiled(data, no_clip_warning):
    model = _fitted("tree", data)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(data[2]), model.predict(data[2]))
    with pytest.raises(NotCompiledError, match="call 'compile"):
        again.predict(data[2], fhe="simulate")


@pytest.fixture(scope="module")
def saved(tree, tmp_path_factory):
    return tree.save(tmp_path_factory.mktemp("saved") / "bundle")


def test_load_reads_a_saved_bundle_back(tree, saved, data, no_clip_warning):
    compiled, loaded = tree, veilml.load(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["client", "model", "server"]
    assert loaded.n_features_in_ == 4
    np.testing.assert_array_equal(loaded.classes_, compiled.classes_)
    _assert_same_predictions(compiled, loaded, data[2])
    np.testing.assert_array_equal(loaded.decision_scores(data[2]), compiled.decision_scores(data[2]))
    with pytest.raises(ValueError, match="fhe_path must be 'auto' or 'tfhe'"):
        loaded.predict(data[2], fhe_path="batch")


@pytest.mark.parametrize(("part", "name"), [("model", "configuration.json"), ("model", "graph.zip"), ("client", "codec.json")])
def test_a_tampered_bundle_is_refused_by_load(saved, tmp_path, part, name):
    copy = shutil.copytree(saved, tmp_path / "copy")
    with open(copy / part / name, "ab") as handle:
        handle.write(b" ")
    with pytest.raises(ArtifactError, match=f"{name} does not match its sha256 in the manifest"):
        veilml.load(copy)


def test_load_refuses_mixed_or_incomplete_bundles(saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "copy")
    manifest = json.loads((copy / "model" / "manifest.json").read_text())
    assert json.loads((copy / "model" / "configuration.json").read_text())["global_p_error"] == 1e-5
    (copy / "model" / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0" * 64}))
    with pytest.raises(ArtifactError, match="parts of .* are of different models"):
        veilml.load(copy)
    shutil.rmtree(copy / "model")
    with pytest.raises(ArtifactError, match="no model/ part"):
        veilml.load(copy)


@pytest.mark.execute
def test_a_loaded_bundle_executes_with_its_own_server(tree, saved, data, no_clip_warning):
    X = data[2][:2]
    loaded = veilml.load(saved)
    np.testing.assert_array_equal(loaded.predict_integers(X, "execute"), tree.predict_integers(X, "simulate"))


def test_saving_never_deletes_a_directory_that_is_not_a_bundle(tmp_path):
    from veilml.serving.bundle import save_bundle

    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a bundle"):
        save_bundle(object(), folder)  # refused before anything is read from the model
    assert (folder / "thesis.txt").read_text() == "years of work"
