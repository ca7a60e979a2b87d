"""``veilml serve BUNDLE`` as a real process on loopback, and RemoteModel as its client in this one."""

import shutil

import numpy as np
import pytest
from worker_helpers import CLIWorker, files_bytes, holding, key_windows, veilml_script

pytestmark = pytest.mark.execute


@pytest.fixture(scope="module")
def served(compiled_cancer_tree, tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve")
    bundle = compiled_cancer_tree.save(directory / "bundle")
    server = CLIWorker(
        directory, str(bundle), "--state", str(directory / "state"), "--max-payload-mb", "40", name="serve", command="serve"
    )
    server.wait_ready()
    yield server, bundle, directory
    server.kill()


def _secret_key(model):
    return model.client._fhe._client.keys._keyset.get_client_keys().get_secret_keys()[0].serialize()


def test_remote_predictions_equal_simulate_and_the_server_holds_no_secret_key(
    served, compiled_cancer_tree, cancer, tmp_path, no_clip_warning
):
    from veilml.serving.remote_model import RemoteModel

    server, bundle, directory = served
    X = cancer[1][:5]
    with RemoteModel(server.url, key_dir=tmp_path / "keys", bundle_dir=tmp_path / "client") as model:
        np.testing.assert_array_equal(model.predict_integers(X), compiled_cancer_tree.predict_integers(X, "simulate"))
        np.testing.assert_array_equal(model.predict(X), compiled_cancer_tree.predict(X, "simulate"))
        windows = key_windows(_secret_key(model))
    assert holding(files_bytes(tmp_path / "keys"), windows) == [0]  # the probe finds the key where it is
    # the server's bundle, its key store and its log hold evaluation keys and ciphertexts only
    assert holding(files_bytes(bundle / "server"), windows) == []
    stored = list(files_bytes(directory / "state"))
    assert len(stored) == 2 and holding(iter(stored), windows) == []
    assert holding(iter([server.log.read_bytes()]), windows) == []


def test_a_restart_keeps_the_registered_keys(served, compiled_cancer_tree, cancer, tmp_path, no_clip_warning):
    import httpx

    from veilml.serving.remote_model import RemoteModel

    server, bundle, directory = served
    X = cancer[1][5:7]
    model = RemoteModel(server.url, key_dir=tmp_path / "keys", bundle_dir=tmp_path / "client")
    key_id = model.register()
    server.kill()
    server._start(server.port)  # same port, same state directory
    server.wait_ready()
    assert httpx.get(server.url + "/health").json()["key_sets"] >= 1
    uploads = []
    model._http.event_hooks["request"] = [lambda request: uploads.append(request.url.path)]
    np.testing.assert_array_equal(model.predict_integers(X), compiled_cancer_tree.predict_integers(X, "simulate"))
    assert uploads == ["/predict"] and model.register() == key_id  # no new POST /keys after the restart
    # a server that lost its key store answers 401 unknown-key: the client registers its keys again, once
    server.kill()
    shutil.rmtree(directory / "state")
    server._start(server.port)
    server.wait_ready()
    uploads.clear()
    np.testing.assert_array_equal(model.predict_integers(X), compiled_cancer_tree.predict_integers(X, "simulate"))
    assert uploads == ["/predict", "/keys", "/predict"]


def test_refused_requests(served, cancer, tmp_path, no_clip_warning):
    import httpx

    from veilml.serving.bundle import ModelClient

    server, bundle, _ = served
    client = ModelClient(bundle)
    registered = httpx.post(server.url + "/keys", content=client.evaluation_keys(), timeout=60).json()
    good = client.encrypt(cancer[1][:1])

    def predict(body, key_id=registered["key_id"], secret=registered["secret"]):
        headers = {"x-veilml-key-id": key_id}
        if secret is not None:
            headers["x-veilml-key-secret"] = secret
        return httpx.post(server.url + "/predict", content=body, headers=headers, timeout=60)

    answer = predict(good, key_id="ab" * 32)
    assert (answer.status_code, answer.json()["code"]) == (401, "unknown-key")
    answer = predict(good, secret="another client's guess")  # a key id is public; its secret is not
    assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")
    answer = predict(good, secret=None)
    assert (answer.status_code, answer.json()["code"]) == (401, "no-secret")
    answer = predict(b"not a ciphertext")
    assert (answer.status_code, answer.json()["code"]) == (400, "bad-ciphertext")
    assert "not a veilml batch" in answer.json()["detail"]
    answer = predict(good[:-100])
    assert answer.status_code == 400 and "truncated" in answer.json()["detail"]
    answer = predict(b"\0" * (41 * 2**20))
    assert answer.status_code == 413 and "limit of 41943040 bytes" in answer.json()["detail"]
    answer = httpx.post(server.url + "/keys", content=b"garbage", timeout=60)
    assert (answer.status_code, answer.json()["code"]) == (400, "bad-keys")
    # and the good request still works after all that
    assert predict(good).status_code == 200
    assert httpx.get(server.url + "/openapi.json").json()["paths"].keys() >= {"/health", "/keys", "/predict", "/bundle/client"}


def test_veilml_predict_scores_a_table_on_the_batched_path(compiled_cancer_tree, cancer, tmp_path, no_clip_warning):
    """``veilml predict URL``: 200 rows through ``POST /batch/predict`` (a depth-5 tree in digits: one request of
    about 230 MB, so this server takes 300), then 3 rows forced onto the TFHE path; both equal ``disable``."""
    import subprocess

    bundle = compiled_cancer_tree.save(tmp_path / "bundle")
    args = (str(bundle), "--state", str(tmp_path / "state"), "--max-payload-mb", "300")
    server = CLIWorker(tmp_path, *args, name="serve-batch", command="serve").wait_ready()
    try:
        X = np.vstack([cancer[1]] * 2)[:200]
        np.savetxt(tmp_path / "rows.csv", X, delimiter=",")
        for rows, path in ((200, "auto"), (3, "tfhe")):
            np.savetxt(tmp_path / "few.csv", X[:rows], delimiter=",")
            subprocess.run(
                [str(veilml_script()), "predict", server.url, "--input", str(tmp_path / "few.csv"), "--out"]
                + [str(tmp_path / f"{path}.csv"), "--fhe-path", path, "--progress", "off"],
                check=True,
                capture_output=True,
                text=True,
            )
            got = np.loadtxt(tmp_path / f"{path}.csv", delimiter=",", ndmin=1)
            np.testing.assert_array_equal(got, compiled_cancer_tree.predict(X[:rows], fhe="disable"))
        log = server.text()
        assert log.count("/batch/predict") >= 1 and "/predict" in log.replace("/batch/predict", "")
    finally:
        server.kill()
