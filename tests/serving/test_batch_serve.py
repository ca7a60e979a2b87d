"""The batched path deployed: a saved bundle served by ``veilml serve``'s app, RemoteModel as its client, and Dask.

One small model (a depth-3 tree on three features: 189 input bits, one 8,192-slot batch) compiled once, for its
bundle; the app runs in this process (Starlette's test client), its evaluations in isolated children as served.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from requires import require
from sklearn.datasets import load_breast_cancer

from veilml.runtime.seal_bytes import seal_files

pytestmark = pytest.mark.execute
pytest.importorskip("tenseal")

X, Y = load_breast_cancer(return_X_y=True)
X3 = X[:, :3]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, test_config):
    from veilml.models.trees.estimators import DecisionTreeClassifier

    est = DecisionTreeClassifier(n_bits=6, max_depth=3, random_state=0).fit(X3, Y).compile(X3, test_config)
    return est, est.save(tmp_path_factory.mktemp("batch-serve") / "bundle")


def _serve(bundle, state, **limits):
    from starlette.testclient import TestClient

    from veilml.serving.model_service import create_model_app

    return TestClient(create_model_app(bundle, state, **limits))


def _remote(http, tmp_path, **options):
    """A RemoteModel whose requests go to the app in this process (through ``http``, its test client)."""
    import httpx

    from veilml.serving.remote_model import RemoteModel

    class Through(httpx.BaseTransport):
        def handle_request(self, request):
            dropped = ("host", "content-length", "transfer-encoding")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
            answer = http.request(request.method, request.url.path, content=request.read(), headers=headers)
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-encoding", "content-length")}
            return httpx.Response(answer.status_code, headers=kept, content=answer.content)

    return RemoteModel("http://testserver", transport=Through(), bundle_dir=tmp_path / "client", retries=0, **options)


def test_remote_model_scores_a_table_on_the_batched_path_as_disable(saved, tmp_path):
    est, bundle = saved
    assert (bundle / "server" / "batch.json").exists()
    with _serve(bundle, tmp_path / "state") as http, _remote(http, tmp_path, progress=False) as model:
        assert http.get("/health").json()["batch"] is True
        sent: list = []
        model._http.event_hooks["request"] = [sent.append]
        np.testing.assert_array_equal(model.predict(X3), est.predict(X3, fhe="disable"))  # 569 rows: auto takes it
        np.testing.assert_array_equal(model.predict_proba(X3[:7], fhe_path="batch"), est.predict_proba(X3[:7], fhe="disable"))
        secret = seal_files().save(model._batch.client.last_session.client._secret)
    assert [r.url.path for r in sent] == ["/batch", "/batch/predict", "/batch/predict"]  # no TFHE key was made or sent
    windows = [secret[i : i + 256] for i in range(1024, len(secret) - 256, len(secret) // 8)]
    assert not any(window in request.content for window in windows for request in sent)


def test_the_service_refuses_malformed_batched_requests(saved, tmp_path):
    from veilml.runtime.batch.halves import BatchModelClient
    from veilml.runtime.envelope import pack_batch

    est, bundle = saved
    with _serve(bundle, tmp_path / "state") as http:
        description = http.get("/batch").json()
        client = BatchModelClient(est.fhe_model_.codec, description)
        session = client.session(client.plan(40, "thermometer"))
        good = session.request(est.fhe_model_.codec.input_quantizer.quantize(X3[:40], warn=False))
        header = json.dumps({"format": "veilml-batch-request/1", "encoding": "thermometer", "rows": 9000, "inputs": 189})
        for body, message in [
            (pack_batch([good.pack().split(b"{", 1)[0]]), "bad batched request"),
            (pack_batch([header.encode(), good.relin_keys, good.public_key, *good.inputs]), "1 to 8192 rows"),
            (pack_batch([good.pack()]), "bad batched request"),
            (b"not a batch", "not a veilml batch"),
        ]:
            answer = http.post("/batch/predict", content=body)
            assert answer.status_code == 400 and answer.json()["code"] == "bad-batch", answer.text
            assert message in answer.json()["detail"]
        few = type(good)(good.encoding, good.rows, good.relin_keys, good.public_key, good.inputs[:-1])
        answer = http.post("/batch/predict", content=few.pack())
        assert answer.status_code == 400 and "reads 189 ciphertexts, the request has 188" in answer.json()["detail"]
        answer = http.post("/batch/predict", content=good.pack())
        assert answer.status_code == 200
        np.testing.assert_array_equal(
            session.scores(answer.content, 40), est.predict_integers(X3[:40]) @ est.fhe_model_.codec.output_combine
        )


def test_a_bundle_saved_without_the_batched_path_says_so(saved, tmp_path):
    from veilml.runtime.manifest import write_manifest
    from veilml.serving.bundle import SERVER_FORMAT
    from veilml.serving.remote_model import RemoteModelError

    _, bundle = saved
    old = shutil.copytree(bundle, tmp_path / "old")
    (old / "server" / "batch.json").unlink()
    manifest = json.loads((old / "server" / "manifest.json").read_text())
    facts = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "versions", "files")}
    write_manifest(old / "server", SERVER_FORMAT, **facts)
    with _serve(old, tmp_path / "state") as http, _remote(http, tmp_path) as model:
        assert http.get("/health").json()["batch"] is False
        assert http.get("/batch").json()["code"] == "no-batch-path"
        with pytest.raises(RemoteModelError, match="no batched path"):
            model.predict(X3[:3], fhe_path="batch")


def test_batches_spread_over_dask_workers_equal_disable(saved):
    require("distributed", "dask")
    from distributed import Client, LocalCluster

    from veilml.runtime.batch.halves import BatchModelClient
    from veilml.serving.batch_bundle import batch_description
    from veilml.serving.bundle import ModelClient
    from veilml.serving.dask import run_batches_on_dask

    est, bundle = saved
    table = np.tile(X3, (15, 1))[: 8192 + 100]  # two batches, each evaluated whole by a worker
    batched = BatchModelClient(ModelClient(bundle).codec, batch_description(bundle))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as dask,
    ):
        scores = batched.score(table, run_batches_on_dask(dask, bundle), encoding="thermometer", progress=False)
    np.testing.assert_array_equal(est.fhe_model_.codec.scores(scores), est.decision_scores(table, fhe="disable"))
