"""Deployment bundles: a compiled model saved as a client side and a server side, loaded and checked."""

import json
import os
import shutil

import numpy as np
import pytest
from worker_helpers import files_bytes, holding, key_windows

from veilml.runtime.codec import ClientCodec
from veilml.runtime.envelope import EnvelopeError, KeyMismatchError, pack_batch, unpack_batch
from veilml.runtime.manifest import ArtifactError
from veilml.runtime.server import UnknownKeyError
from veilml.serving.bundle import ModelClient, ModelServer


@pytest.fixture(scope="module")
def bundle(compiled_cancer_tree, tmp_path_factory):
    return compiled_cancer_tree.save(tmp_path_factory.mktemp("bundles") / "cancer")


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "copy")


def test_bundle_layout_and_what_the_client_side_holds(bundle, compiled_cancer_tree, no_clip_warning):
    assert sorted(p.name for p in (bundle / "client").iterdir()) == ["client.specs.json", "codec.json", "manifest.json"]
    assert sorted(p.name for p in (bundle / "server").iterdir()) == [
        "batch.json",  # the batched path's slot programs
        "client.specs.json",
        "layout.bin",
        "manifest.json",
        "server.zip",
    ]
    manifest = json.loads((bundle / "client" / "manifest.json").read_text())
    assert manifest["format"] == "veilml-bundle/client" and manifest["format_version"] == 1
    assert set(manifest["versions"]) == {"veilml", "concrete-python"}
    assert set(manifest["files"]) == {"client.specs.json", "codec.json"}
    # the client side has the input grid and the output scale, nothing of the tree in between
    codec = json.loads((bundle / "client" / "codec.json").read_text())
    assert set(codec) == {
        "input_quantizer",
        "encoding",
        "output_quantizer",
        "output_bias",
        "output_combine",
        "output",
        "warn_on_clip",
    }
    assert codec["output"] == {"task": "classification", "post_transform": "identity", "classes": [0, 1]}
    # the codec read back computes what the model computes
    X = np.random.default_rng(0).normal(size=(5, 30)) * 10 + 20
    again = ClientCodec.from_json((bundle / "client" / "codec.json").read_text())
    np.testing.assert_array_equal(again.encode(X), compiled_cancer_tree.fhe_model_.encode(X))


@pytest.mark.execute
def test_client_and_server_from_the_bundle_alone_agree_with_simulate(
    bundle, compiled_cancer_tree, cancer, tmp_path, no_clip_warning
):
    X = cancer[1][:3]
    client = ModelClient(bundle, key_dir=tmp_path / "keys")
    server = ModelServer(bundle)
    key_id = server.register(client.evaluation_keys())
    assert key_id == client.key_id
    results = server.run(client.encrypt(X), key_id)
    np.testing.assert_array_equal(client.decrypt_integers(results), compiled_cancer_tree.predict_integers(X, "simulate"))
    np.testing.assert_array_equal(client.decrypt(results), compiled_cancer_tree.predict(X, "simulate"))
    np.testing.assert_allclose(client.decrypt_proba(results), compiled_cancer_tree.predict_proba(X, "simulate"))
    # keys written 0600 and reused by the next client made on the same key directory
    (key_file,) = (tmp_path / "keys").iterdir()
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert ModelClient(bundle, key_dir=tmp_path / "keys").key_id == key_id
    # the secret key is nowhere on the server side: not in the bundle, not in what it received
    secret = client._fhe._client.keys._keyset.get_client_keys().get_secret_keys()[0].serialize()
    windows = key_windows(secret)
    assert holding(iter([key_file.read_bytes()]), windows) == [0]  # the probe finds it where it is
    assert holding(files_bytes(bundle / "server"), windows) == []
    assert holding(iter([client.evaluation_keys(), client.encrypt(X), results]), windows) == []


@pytest.mark.execute
def test_server_refuses_unknown_key_ids_and_malformed_batches(bundle, cancer, no_clip_warning):
    client, server = ModelClient(bundle), ModelServer(bundle)
    batch = client.encrypt(cancer[1][:1])
    with pytest.raises(UnknownKeyError, match="no evaluation keys registered under key id"):
        server.run(batch, client.key_id)
    key_id = server.register(client.evaluation_keys())
    with pytest.raises(KeyMismatchError, match="encrypted under other keys"):
        server.run(batch, "0" * 64)
    with pytest.raises(EnvelopeError, match="not a veilml batch"):
        server.run(b"garbage", key_id)
    with pytest.raises(EnvelopeError, match="truncated"):
        server.run(batch[:-10], key_id)
    (row,) = unpack_batch(batch, max_items=1)
    with pytest.raises(EnvelopeError, match="payload"):
        server.run(pack_batch([row[:-1]]), key_id)
    with pytest.raises(EnvelopeError, match="more than the limit of 256"):
        server.run(pack_batch([row] * 257), key_id)


def test_client_refuses_wrong_number_of_features_and_too_many_rows(bundle):
    client = ModelClient(bundle, max_rows=4)
    with pytest.raises(ValueError, match="30 features"):
        client.encrypt(np.zeros((2, 29)))
    with pytest.raises(ValueError, match="limit is 4"):
        client.encrypt(np.zeros((5, 30)))
    with pytest.raises(ValueError, match="NaN"):
        client.encrypt(np.full((1, 30), np.nan))


def test_tampered_bundles_are_refused(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    codec = copy / "client" / "codec.json"
    codec.write_text(codec.read_text().replace('"identity"', '"sigmoid"'))
    with pytest.raises(ArtifactError, match="codec.json does not match its sha256"):
        ModelClient(copy)
    with open(copy / "server" / "server.zip", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="server.zip does not match its sha256"):
        ModelServer(copy)
    (copy / "server" / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(ArtifactError, match="does not list"):
        ModelServer(copy)
    (copy / "server" / "layout.bin").unlink()
    with pytest.raises(ArtifactError):
        ModelServer(copy)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        ModelClient(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 2}, "format version 2"),
        ({"versions": {"veilml": "0.1.0", "concrete-python": "1.0.0"}}, "concrete-python 1.0.0"),
        ({"format": "veilml-bundle/server"}, "not a 'veilml-bundle/client' one"),
    ],
)
def test_incompatible_versions_are_refused(bundle, tmp_path, change, message):
    copy = _copy(bundle, tmp_path)
    path = copy / "client" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ArtifactError, match=message):
        ModelClient(copy)


def test_compatible_versions_load(bundle, tmp_path):
    """Another veilml release with the same format and concrete-python of the same major.minor loads."""
    from importlib.metadata import version

    copy = _copy(bundle, tmp_path)
    path = copy / "client" / "manifest.json"
    manifest = json.loads(path.read_text())
    major, minor, *_ = version("concrete-python").split(".")
    manifest["versions"] = {"veilml": "9.9.9", "concrete-python": f"{major}.{minor}.999"}
    path.write_text(json.dumps(manifest))
    assert ModelClient(copy).n_features == 30


def test_unfitted_or_uncompiled_models_cannot_be_saved(cancer, tmp_path):
    from sklearn.exceptions import NotFittedError

    from veilml import DecisionTreeClassifier
    from veilml.runtime import NotCompiledError

    with pytest.raises(NotFittedError):
        DecisionTreeClassifier().save(tmp_path / "b")
    model = DecisionTreeClassifier(max_depth=2, n_bits=3).fit(cancer[0], cancer[2])
    with pytest.raises(NotCompiledError, match="compile"):
        model.save(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_model_server_access_token(bundle, tmp_path):
    """With an access token, every endpoint but /health needs it (in-process app, no FHE run)."""
    from starlette.testclient import TestClient

    from veilml.serving.model_service import create_model_app

    token = "t" * 32
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_model_app(bundle, tmp_path / "state", access_token="short")
    with TestClient(create_model_app(bundle, tmp_path / "state", access_token=token)) as http:
        assert http.get("/health").status_code == 200
        missing = http.get("/bundle/client")
        assert (missing.status_code, missing.json()["code"]) == (401, "access-token")
        wrong = http.post("/keys", content=b"x", headers={"authorization": "Bearer " + "u" * 32})
        assert (wrong.status_code, wrong.json()["code"]) == (403, "forbidden")
        good = http.get("/bundle/client", headers={"authorization": f"Bearer {token}"})
        assert good.status_code == 200 and good.headers["content-type"] == "application/zip"


def test_remote_model_refuses_a_hostile_client_bundle(tmp_path):
    """The zip a server sends: unknown names and oversized members are refused before extraction."""
    import io
    import zipfile

    from veilml.serving.remote_model import RemoteModel, RemoteModelError

    def archive(files):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
        return buffer.getvalue()

    remote = RemoteModel.__new__(RemoteModel)
    remote.url, remote._bundle_dir = "http://server", tmp_path / "client"
    with pytest.raises(RemoteModelError, match="unexpected files"):
        remote._unpack(archive({"manifest.json": b"{}", "../evil.py": b"x"}))
    with pytest.raises(RemoteModelError, match="files over 4194304 bytes"):
        remote._unpack(archive({"manifest.json": b"{}", "codec.json": b"0" * (4 * 2**20 + 1)}))
    with pytest.raises(RemoteModelError, match="did not send a zip"):
        remote._unpack(b"not a zip")
    assert not (tmp_path / "client").exists()
