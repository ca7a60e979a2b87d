"""Bundles are code: Ed25519 signatures of their manifests, made by their maker and required by loaders."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import zipfile

import pytest

from veilml.runtime.manifest import (
    SIGNATURE,
    ArtifactError,
    SignatureError,
    load_public_key,
    public_key_id,
    write_key_pair,
    write_manifest,
)
from veilml.serving.bundle import ModelClient, ModelServer, client_bundle_fingerprint, save_bundle, sign_bundle


@pytest.fixture(scope="module")
def maker(tmp_path_factory):
    """The model maker's key pair: (private key path, public key path)."""
    return write_key_pair(tmp_path_factory.mktemp("maker") / "maker.key")


@pytest.fixture(scope="module")
def signed(compiled_cancer_tree, maker, tmp_path_factory):
    return save_bundle(compiled_cancer_tree.fhe_model_, tmp_path_factory.mktemp("signed") / "cancer", signing_key=maker[0])


def test_key_pairs(maker, tmp_path):
    private, public = maker
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and public.name == "maker.key.pub"
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert public_key_id(public) == public_key_id(public.read_bytes()) == public_key_id(load_public_key(public))
    with pytest.raises(FileExistsError, match="never replaced"):
        write_key_pair(private)
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(private.read_bytes())


def test_a_signed_bundle_loads_with_its_makers_key(signed, maker):
    private, public = maker
    assert (signed / "client" / SIGNATURE).is_file() and (signed / "server" / SIGNATURE).is_file()
    client = ModelClient(signed, trusted_key=public)
    assert client.bundle_fingerprint == client_bundle_fingerprint(signed)
    assert ModelClient(signed, trusted_key=public.read_bytes()).n_features == 30  # PEM bytes
    assert ModelClient(signed, trusted_key=load_public_key(public)).n_features == 30  # a key object
    assert ModelServer(signed, trusted_key=str(public)).n_features == 30
    assert ModelClient(signed).n_features == 30  # no key given: the signature is not looked at


def test_an_altered_server_bundle_is_refused_before_its_code_is_loaded(signed, maker, tmp_path, monkeypatch):
    """A re-hashed server.zip carrying a foreign shared library ran its constructor on the first
    request: with the maker's key, it is refused before concrete loads anything."""
    from concrete import fhe

    private, public = maker
    copy = shutil.copytree(signed, tmp_path / "copy")
    server = copy / "server"
    archive = io.BytesIO((server / "server.zip").read_bytes())
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("evil.so", b"\x7fELF" + b"\0" * 64)
    (server / "server.zip").write_bytes(archive.getvalue())
    manifest = json.loads((server / "manifest.json").read_text())
    facts = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "versions", "files")}
    write_manifest(server, manifest["format"], **facts)  # what an attacker does: hash the new files again
    loaded = []
    monkeypatch.setattr(fhe.Server, "load", staticmethod(lambda path: loaded.append(path)))
    with pytest.raises(SignatureError, match="altered after it was signed; refuse it"):
        ModelServer(copy, trusted_key=public)
    assert loaded == []
    # the manifest alone says nothing of who made a bundle: this one passes it
    ModelServer(copy)
    assert loaded == [str(server / "server.zip")]
    # signed again by someone else's key: refused as not the maker's
    intruder, _ = write_key_pair(tmp_path / "intruder.key")
    sign_bundle(copy, intruder)
    with pytest.raises(SignatureError, match="signed by key .*, not by the trusted key"):
        ModelServer(copy, trusted_key=public)
    with pytest.raises(SignatureError, match="signed by key"):
        ModelClient(copy, trusted_key=public)


def test_unsigned_or_broken_signatures_are_refused_when_a_key_is_given(signed, maker, tmp_path):
    private, public = maker
    copy = shutil.copytree(signed, tmp_path / "copy")
    (copy / "client" / SIGNATURE).write_text("{not json")
    with pytest.raises(SignatureError, match="not a valid signature"):
        ModelClient(copy, trusted_key=public)
    (copy / "client" / SIGNATURE).unlink()
    with pytest.raises(SignatureError, match="is not signed .*a bundle is code"):
        ModelClient(copy, trusted_key=public)
    assert ModelClient(copy).n_features == 30  # unsigned bundles load as before without a key
    # signing checks the bundle first, and covers every file through the manifest
    sign_bundle(copy / "client", private)
    assert ModelClient(copy, trusted_key=public).n_features == 30
    codec = copy / "client" / "codec.json"
    codec.write_text(codec.read_text().replace('"identity"', '"sigmoid"'))
    with pytest.raises(ArtifactError, match="corrupted or altered after saving"):
        sign_bundle(copy, private)
    with pytest.raises(ArtifactError, match="corrupted or altered after saving") as info:
        ModelClient(copy)
    assert "tamper" not in str(info.value)


def test_remote_model_verifies_the_signature_the_server_sends(signed, maker, tmp_path):
    import httpx

    from veilml.runtime.envelope import specs_fingerprint
    from veilml.serving.remote_model import RemoteModel

    private, public = maker
    intruder, intruder_public = write_key_pair(tmp_path / "intruder.key")

    def transport(client_dir):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for path in sorted(client_dir.iterdir()):
                z.write(path, path.name)
        fingerprint = specs_fingerprint((client_dir / "client.specs.json").read_bytes())

        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/bundle/client":
                return httpx.Response(200, content=buffer.getvalue())
            return httpx.Response(200, json={"status": "ok", "fingerprint": fingerprint, "max_rows": 16})

        return httpx.MockTransport(answer)

    with RemoteModel("http://server", trusted_key=public, transport=transport(signed / "client"), retries=0) as model:
        assert (model._bundle_dir / SIGNATURE).is_file() and model.max_rows == 16
    with pytest.raises(SignatureError, match="not by the trusted key"):
        RemoteModel("http://server", trusted_key=intruder_public, transport=transport(signed / "client"), retries=0)


def test_the_sign_command(compiled_cancer_tree, tmp_path, capsys):
    from veilml.cli import main

    key = tmp_path / "keys" / "maker.key"
    assert main(["sign", "--new-key", str(key)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and (tmp_path / "keys" / "maker.key.pub").is_file()
    bundle = compiled_cancer_tree.save(tmp_path / "bundle")
    capsys.readouterr()
    assert main(["sign", str(bundle), "--key", str(key)]) == 0
    err = capsys.readouterr().err
    assert f"client bundle fingerprint {client_bundle_fingerprint(bundle)}" in err and err.count("signed ") == 3
    assert ModelServer(bundle, trusted_key=tmp_path / "keys" / "maker.key.pub").n_features == 30
    assert main(["sign", "--new-key", str(key)]) == 1  # an existing key is never replaced
    assert "never replaced" in capsys.readouterr().err
    assert main(["sign", str(bundle)]) == 1


def test_veilml_serve_requires_the_makers_signature_when_given_a_key(signed, maker, compiled_cancer_tree, tmp_path):
    """``veilml serve --trusted-key`` (create_model_app(trusted_key=)): a bundle not signed by that key never loads."""
    from starlette.testclient import TestClient

    from veilml.serving.model_service import create_model_app

    private, public = maker
    intruder, intruder_public = write_key_pair(tmp_path / "intruder.key")
    with TestClient(create_model_app(signed, tmp_path / "state", trusted_key=str(public))) as http:
        health = http.get("/health").json()
        assert health["bundle_fingerprint"] == client_bundle_fingerprint(signed)
    with pytest.raises(SignatureError, match="not by the trusted key"):
        create_model_app(signed, tmp_path / "state", trusted_key=str(intruder_public))
    unsigned = save_bundle(compiled_cancer_tree.fhe_model_, tmp_path / "unsigned")
    with pytest.raises(SignatureError):
        create_model_app(unsigned, tmp_path / "state", trusted_key=str(public))
