"""A client that trusts nothing a server hands it: hostile client bundles, answers and key files.

Each hostile bundle is a real saved bundle, edited and hashed again into its manifest as a hostile
server would. The RemoteModel tests serve hostile bytes from a small HTTP server on loopback. No
test runs FHE: refusals come before any key is made, or before anything is decrypted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veilml.runtime.client import FHEClient, ResultError, read_private_file, write_private_file
from veilml.runtime.envelope import pack_batch, pack_envelope, specs_fingerprint, unpack_envelope
from veilml.runtime.manifest import ArtifactError, write_manifest
from veilml.runtime.security import InsecureParametersError, check_client_specs
from veilml.serving.bundle import CLIENT_FORMAT, ModelClient, client_bundle_fingerprint
from veilml.serving.remote_model import RemoteModel, RemoteModelError


@pytest.fixture(scope="module")
def bundle(compiled_cancer_tree, tmp_path_factory) -> Path:
    return compiled_cancer_tree.save(tmp_path_factory.mktemp("trust") / "cancer")


def hostile(
    bundle: Path,
    tmp_path: Path,
    *,
    specs: Callable[[dict], None] | None = None,
    codec: Callable[[dict], None] | None = None,
    **facts: Any,
) -> Path:
    """A copy of ``bundle``'s client side with edited specs / codec, hashed again into its manifest
    (with its facts kept consistent, or set to ``facts``): what a hostile server can send."""
    client = shutil.copytree(bundle / "client", tmp_path / "hostile-client")
    manifest = json.loads((client / "manifest.json").read_text())
    for name, edit in (("client.specs.json", specs), ("codec.json", codec)):
        if edit is not None:
            document = json.loads((client / name).read_text())
            edit(document)
            (client / name).write_text(json.dumps(document))
    kept = {k: manifest[k] for k in ("n_features", "input_size")}
    kept["fingerprint"] = specs_fingerprint((client / "client.specs.json").read_bytes())
    write_manifest(client, CLIENT_FORMAT, **{**kept, **facts})
    return client


def _input(d: dict) -> dict:
    return d["circuits"][0]["inputs"][0]


# --- finding 1: a server cannot make the client send plaintext -----------------------------------


def _as_plaintext(gate: dict) -> None:
    dims = gate["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"]
    gate["rawInfo"] = {"shape": {"dimensions": dims}, "integerPrecision": 64, "isSigned": False}
    gate["typeInfo"] = {"plaintext": {"shape": {"dimensions": dims}, "integerPrecision": 64, "isSigned": False}}


def test_a_plaintext_input_gate_is_refused_before_any_key(bundle, tmp_path):
    client_dir = hostile(bundle, tmp_path, specs=lambda d: _as_plaintext(_input(d)))
    with pytest.raises(
        InsecureParametersError, match=r"input 0 .* plaintext value.*send your data unencrypted.*refuse this server"
    ):
        ModelClient(client_dir, key_dir=tmp_path / "keys")
    assert not (tmp_path / "keys").exists()  # refused before any key was made
    # the second line of defence: the client that encrypts refuses such specs on its own
    from concrete import fhe

    specs = (client_dir / "client.specs.json").read_bytes()
    codec = ModelClient(bundle).codec
    with pytest.raises(InsecureParametersError, match="'plaintext' value, not an LWE ciphertext"):
        FHEClient(fhe.ClientSpecs.deserialize(specs), codec)
    # a plaintext output (the result in the clear) and index gates are refused too
    for edit in (
        lambda d: _as_plaintext(d["circuits"][0]["outputs"][0]),
        lambda d: _input(d).update(typeInfo={"index": {"shape": {"dimensions": [13]}}}),
    ):
        with pytest.raises(InsecureParametersError, match="not an LWE ciphertext"):
            check_client_specs(json.dumps(_edited(specs, edit)))


def _edited(specs: bytes, edit: Callable[[dict], None]) -> dict:
    document = json.loads(specs)
    edit(document)
    return document


@pytest.mark.parametrize(
    "specs_edit, codec_edit, facts, message",
    [
        (None, None, {"n_features": 29}, "manifest says n_features = 29 and its codec 30"),
        (None, None, {"input_size": 13}, "manifest says input_size = 13 and its codec 1890"),
        (None, None, {"fingerprint": "0" * 64}, "manifest names another model"),
        (lambda d: _input(d)["typeInfo"]["lweCiphertext"]["abstractShape"].update(dimensions=[2, 13]), None, {}, "not one row"),
        (lambda d: d["circuits"][0]["inputs"].append(_input(d)), None, {}, "2 inputs"),
        (None, lambda c: c.update(output_combine=[[1, -1]]), {}, "combines 1 output integers"),
        (None, lambda c: c["encoding"].update(kind="identity"), {"input_size": 30}, "3-bit input cannot hold"),
    ],
)
def test_specs_codec_and_manifest_must_describe_one_circuit(bundle, tmp_path, specs_edit, codec_edit, facts, message):
    client_dir = hostile(bundle, tmp_path, specs=specs_edit, codec=codec_edit, **facts)
    with pytest.raises(InsecureParametersError, match=message) as info:
        ModelClient(client_dir)
    assert "the server that sent it may be hostile" in str(info.value)


# --- finding 6: a hostile bundle cannot drive allocations ----------------------------------------


def test_a_codec_asking_for_huge_rows_is_refused(bundle, tmp_path):
    # a 1.2 KB codec with a thermometer qmax of 2**24 made encrypt() allocate 3.75 GiB
    client_dir = hostile(bundle, tmp_path, codec=lambda c: c["encoding"].update(qmax=2**24), input_size=30 * 2**24)
    with pytest.raises(InsecureParametersError, match="wider than 24 bits.*hostile"):
        ModelClient(client_dir)
    shutil.rmtree(client_dir)
    client_dir = hostile(bundle, tmp_path, codec=lambda c: c["encoding"].update(qmax=2**16 - 1), input_size=30 * (2**16 - 1))
    with pytest.raises(InsecureParametersError, match="rows of 1,966,050 integers, more than the 131,072"):
        ModelClient(client_dir)
    shutil.rmtree(client_dir)
    client_dir = hostile(bundle, tmp_path, codec=lambda c: c["input_quantizer"].update(n_bits=10**9))
    with pytest.raises(InsecureParametersError, match=r"n_bits must be an integer in \[1, 62\]"):
        ModelClient(client_dir)


def _resize_key_0(d: dict, glwe: int, poly: int) -> None:
    """Key 0 (the bootstrap's output GLWE key, the inputs' and outputs' key) grown to glwe x poly,
    with everything that names it agreeing: specs that are consistent and on the security curve."""
    n = glwe * poly
    keyset = d["keyset"]
    keyset["lweSecretKeys"][0]["params"]["lweDimension"] = n
    keyset["lweBootstrapKeys"][0]["params"].update(glweDimension=glwe, polynomialSize=poly)
    keyset["lweKeyswitchKeys"][0]["params"]["inputLweDimension"] = n
    for side in ("inputs", "outputs"):
        for gate in d["circuits"][0][side]:
            ct = gate["typeInfo"]["lweCiphertext"]
            ct["encryption"]["lweDimension"] = n
            ct["concreteShape"]["dimensions"][-1] = n + 1


def test_specs_with_keys_or_values_beyond_concretes_parameter_search_are_refused(bundle):
    specs = (bundle / "client" / "client.specs.json").read_bytes()
    check_client_specs(specs)  # the real ones pass
    # a 2**26-dimension key passed the security curve, and key generation died in std::bad_alloc
    huge_key = _edited(specs, lambda d: _resize_key_0(d, 2**17, 512))
    with pytest.raises(InsecureParametersError, match="LWE dimension .* of 67,108,864, more than the 262,144.*exhaust"):
        check_client_specs(json.dumps(huge_key))
    # every dimension within bounds, the bootstrap key 637 GB: refused on its size
    many_levels = _edited(specs, lambda d: _resize_key_0(d, 4, 2**16))
    many_levels["keyset"]["lweBootstrapKeys"][0]["params"].update(levelCount=64, baseLog=1)
    with pytest.raises(InsecureParametersError, match="secret and evaluation keys of .* bytes, more than the 4,294,967,296"):
        check_client_specs(json.dumps(many_levels))
    wide = _edited(specs, lambda d: _resize_key_0(d, 64, 512))
    with pytest.raises(InsecureParametersError, match="GLWE dimension .* of 64, more than the 16"):
        check_client_specs(json.dumps(wide))
    # a value of 2**30 ciphertexts (an input of 12 TiB uncompressed)
    big_input = _edited(specs, lambda d: _input(d)["typeInfo"]["lweCiphertext"]["abstractShape"].update(dimensions=[2**30]))
    with pytest.raises(InsecureParametersError, match="input 0 .* ciphertexts of .* bytes, more than the 2,147,483,648"):
        check_client_specs(json.dumps(big_input))


# --- finding 7: key files and key directories of other users ------------------------------------


def test_key_files_and_directories_of_other_users_are_refused(bundle, tmp_path, monkeypatch):
    key = write_private_file(tmp_path / "mine" / "a.keys", b"secret")
    assert read_private_file(key) == b"secret"
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 4242)  # as if another user had planted the file (0600)
    with pytest.raises(PermissionError, match="owned by user id .* whoever created it knows its secrets"):
        read_private_file(key)
    with pytest.raises(PermissionError, match="key_dir .* is owned by user id .*choose a directory of your own"):
        ModelClient(bundle, key_dir=tmp_path / "mine")
    monkeypatch.setattr(os, "geteuid", lambda: me)
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o777, 0o770, 0o702):  # anyone who can write it can plant keys whose secret they know
        os.chmod(shared, mode)
        with pytest.raises(PermissionError, match=f"writable by other users .*chmod 700 {shared}"):
            ModelClient(bundle, key_dir=shared)
    os.chmod(shared, 0o700)
    assert ModelClient(bundle, key_dir=shared).key_dir == shared
    assert ModelClient(bundle, key_dir=tmp_path / "new" / "keys").n_features == 30  # a missing one is made 0700 later


# --- finding 5: RemoteModel trusts nothing the server sends --------------------------------------


def _client_zip(client_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(client_dir.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


Route = Callable[[bytes], tuple[int, dict[str, str], Any]]


@contextlib.contextmanager
def serving(routes: dict[tuple[str, str], Route]) -> Iterator[tuple[str, dict[str, int]]]:
    """A hostile server on loopback: ``routes`` map (method, path) to (status, headers, body bytes or
    an iterable of chunks). Yields its URL and the bytes each path managed to send."""
    sent: dict[str, int] = {}
    stopped = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that stops reading does not hold a handler thread past the test

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            route = routes.get((method, self.path))
            status, headers, payload = route(body) if route else (404, {}, b"")
            self.send_response(status)
            if isinstance(payload, bytes) and "content-length" not in headers:
                headers = {**headers, "content-length": str(len(payload))}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            sent[self.path] = 0
            try:
                for chunk in [payload] if isinstance(payload, bytes) else payload:
                    if stopped.is_set():
                        break
                    self.wfile.write(chunk)
                    sent[self.path] += len(chunk)
            except OSError:  # the client hung up (or stopped reading past the timeout): what it read is counted
                pass

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

    # Handler threads are joined when the server closes (block_on_close): one left writing a large body
    # into a connection while later tests ran once took the whole test process down (SIGABRT in sendall).
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = False, True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join()


def _json(document: Any) -> Route:
    return lambda body: (200, {"content-type": "application/json"}, json.dumps(document).encode())


def genuine_routes(bundle: Path, **health: Any) -> dict[tuple[str, str], Route]:
    """What ``veilml serve`` answers (no FHE: /predict is left to each test)."""
    specs = (bundle / "client" / "client.specs.json").read_bytes()

    def keys(body: bytes) -> tuple[int, dict[str, str], bytes]:
        identifier = unpack_envelope(body, "evaluation-keys").key_id
        return 201, {"content-type": "application/json"}, json.dumps({"key_id": identifier, "secret": "s" * 43}).encode()

    zipped = _client_zip(bundle / "client")
    return {
        ("GET", "/bundle/client"): lambda body: (200, {"content-type": "application/zip"}, zipped),
        ("GET", "/health"): _json({"status": "ok", "fingerprint": specs_fingerprint(specs), "max_rows": 256, **health}),
        ("POST", "/keys"): keys,
    }


@pytest.fixture(scope="module")
def key_dir(bundle, tmp_path_factory) -> Path:
    """Keys made once for the module: RemoteModels load them instead of making their own."""
    directory = tmp_path_factory.mktemp("remote-keys")
    ModelClient(bundle, key_dir=directory).keygen()
    return directory


def test_remote_model_checks_what_it_reads_and_writes(bundle, tmp_path):
    # a genuine server: accepted, and the bundle can be pinned
    fingerprint = client_bundle_fingerprint(bundle)
    with serving(genuine_routes(bundle)) as (url, _):
        with RemoteModel(url, bundle_dir=tmp_path / "ok", expected_fingerprint=fingerprint, retries=0) as model:
            assert model.bundle_fingerprint == fingerprint and model.max_rows == 256
        with pytest.raises(ArtifactError, match="not the expected .* hostile"):
            RemoteModel(url, bundle_dir=tmp_path / "pinned", expected_fingerprint="ab" * 32, retries=0)
    # bodies are read up to a limit, counted as they arrive: a 768 MiB "bundle" stops near 4 MiB
    routes = genuine_routes(bundle)
    routes["GET", "/bundle/client"] = lambda body: (200, {}, (b"\0" * 2**20 for _ in range(768)))
    with serving(routes) as (url, sent):
        with pytest.raises(RemoteModelError, match="more than the 4,194,304 bytes expected; the server may be hostile"):
            RemoteModel(url, bundle_dir=tmp_path / "big", retries=0)
        assert sent["/bundle/client"] < 64 * 2**20
    routes["GET", "/bundle/client"] = lambda body: (200, {"content-length": str(768 * 2**20)}, b"")
    with serving(routes) as (url, sent):
        with pytest.raises(RemoteModelError, match="announces 805,306,368 bytes"):
            RemoteModel(url, bundle_dir=tmp_path / "announced", retries=0)
    routes = genuine_routes(bundle, padding="x" * 2**20)
    with serving(routes) as (url, _):
        with pytest.raises(RemoteModelError, match="GET /health: the server announces .* more than the 16,384 expected"):
            RemoteModel(url, bundle_dir=tmp_path / "health", retries=0)
    # a bad max_rows from /health is a clear error, not a ValueError later
    for bad in (0, -5, 2.5, "many", True, None):
        with serving(genuine_routes(bundle, max_rows=bad)) as (url, _):
            with pytest.raises(RemoteModelError, match=f"max_rows = {bad!r}, not a positive integer"):
                RemoteModel(url, bundle_dir=tmp_path / f"rows{bad}", retries=0)


def test_remote_model_never_writes_through_a_link(bundle, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with serving(genuine_routes(bundle)) as (url, _):
        planted = tmp_path / "planted"
        planted.mkdir(mode=0o700)
        (planted / "codec.json").symlink_to(victim)
        with pytest.raises(RemoteModelError, match="codec.json in bundle_dir is a symbolic link"):
            RemoteModel(url, bundle_dir=planted, retries=0)
        (tmp_path / "linked").symlink_to(planted)
        with pytest.raises(RemoteModelError, match="bundle_dir .*linked is a symbolic link"):
            RemoteModel(url, bundle_dir=tmp_path / "linked", retries=0)
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, 0o777)
        with pytest.raises(RemoteModelError, match="writable by other users"):
            RemoteModel(url, bundle_dir=shared, retries=0)
        # an existing private bundle directory is reused: its files are replaced, not written through
        reused = tmp_path / "reused"
        reused.mkdir(mode=0o700)
        (reused / "manifest.sig").write_text("stale")
        with RemoteModel(url, bundle_dir=reused, retries=0) as model:
            assert model.client.n_features == 30 and not (reused / "manifest.sig").exists()
    assert victim.read_text() == "precious"


def test_remote_model_refuses_results_that_do_not_answer_the_rows_sent(bundle, key_dir, tmp_path, cancer, no_clip_warning):
    fingerprint = specs_fingerprint((bundle / "client" / "client.specs.json").read_bytes())
    answers: dict[str, Any] = {}

    def predict(body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {"content-type": "application/octet-stream"}, answers["predict"]

    routes = {**genuine_routes(bundle), ("POST", "/predict"): predict}
    with serving(routes) as (url, sent):
        model = RemoteModel(url, key_dir=key_dir, bundle_dir=tmp_path / "client", retries=0)
        fake = pack_envelope("result", b"x" * 100, fingerprint=fingerprint, key_id=model.client.key_id)
        answers["predict"] = pack_batch([fake])  # one result for five rows (a dropped, or replayed, answer)
        with pytest.raises(RemoteModelError, match="holds 1 results for the 5 rows sent.*may be hostile"):
            model.predict(cancer[1][:5])
        answers["predict"] = pack_batch([fake] * 3)
        with pytest.raises(RemoteModelError, match="holds 3 results for the 2 rows sent"):
            model.predict_proba(cancer[1][:2])
        # a result larger than the circuit's output (3 ciphertexts of 1,537 words) is not even read whole
        answers["predict"] = pack_batch([b"\0" * (8 * 2**20)])
        with pytest.raises(RemoteModelError, match=r"POST /predict: the server (announces|sent) .* bytes"):
            model.predict_integers(cancer[1][:1])
        model.close()


def test_a_decrypted_result_of_another_length_is_refused(bundle, key_dir, monkeypatch):
    from concrete import fhe

    client = ModelClient(bundle, key_dir=key_dir)
    fingerprint, key_id = client.fingerprint, client.key_id
    assert client._fhe.output_size == 3
    result = pack_envelope("result", b"x", fingerprint=fingerprint, key_id=key_id)
    # what concrete would decrypt from a value of another shape (the values themselves are never judged)
    monkeypatch.setattr(fhe.Value, "deserialize", staticmethod(lambda payload: payload))
    monkeypatch.setattr(client._fhe._client, "decrypt", lambda value: np.zeros(2, dtype=np.int64), raising=False)
    with pytest.raises(ResultError, match="decrypted to 2 integers, and this model's circuit outputs 3.*may be hostile"):
        client.decrypt_integers(pack_batch([result]), rows=1)
