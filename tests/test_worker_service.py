"""The HTTP worker: a real worker process on loopback, HTTPTransport, errors, keys, restarts, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from requires import require

require("fastapi", "worker")
require("uvicorn", "worker")
httpx = require("httpx", "worker")

from fastapi.testclient import TestClient

from veilml.runtime.linear.protocol import (
    EncryptedLinearExecutor,
    LocalTransport,
    Worker,
)
from veilml.runtime.linear.clear import pack_integers
from veilml.runtime.envelope import unpack_envelope
from veilml.runtime.remote import HTTPTransport, RemoteWorkerError
from veilml.runtime.service import create_app

pytestmark = pytest.mark.timeout(60)

QKV, FC = "model.layers.0.q_proj", "model.layers.0.mlp.fc"
MAX_PAYLOAD = 64 * 1024

WORKER_SCRIPT = """
import os, sys, time
import numpy as np
from veilml.cli import serve
from veilml.runtime.linear.protocol import Worker

data = np.load(sys.argv[1])
weights = {k[2:]: data[k] for k in data.files if k.startswith("w:")}
biases = {k[2:]: data[k] for k in data.files if k.startswith("b:")}
worker = Worker(weights, biases, backend="clear")
delay = float(os.environ.get("VEILML_TEST_RUN_DELAY", "0"))
if delay:  # a slow worker, to be killed in the middle of a run
    run = worker.run
    def slow_run(*args):
        time.sleep(delay)
        return run(*args)
    worker.run = slow_run
options = {"max_inflight_bytes": int(os.environ.get("VEILML_TEST_INFLIGHT", str(2**30))),
           "read_timeout": float(os.environ.get("VEILML_TEST_READ_TIMEOUT", "30"))}
serve(worker, host="127.0.0.1", port=int(sys.argv[2]), max_payload_bytes=int(sys.argv[3]), log_level="info", **options)
"""


def make_weights(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = {QKV: rng.normal(size=(24, 32)) * 0.1, FC: rng.normal(size=(32, 16)) * 0.1}
    biases = {QKV: rng.normal(size=32)}
    return weights, biases


def local_executor(seed: int = 0, backend: str = "clear") -> EncryptedLinearExecutor:
    weights, biases = make_weights(seed)
    return EncryptedLinearExecutor(LocalTransport(Worker(weights, biases, backend=backend)), backend=backend)


def clear_worker(weights, biases=None, **options) -> Worker:
    return Worker(weights, biases or {}, backend="clear", **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """A worker started as its own Python process on loopback."""

    def __init__(self, directory: Path, port: int, delay: float = 0.0, **env: str) -> None:
        self.directory, self.port, self.url = directory, port, f"http://127.0.0.1:{port}"
        script, weights_file = directory / "worker.py", directory / "weights.npz"
        if not script.exists():
            script.write_text(WORKER_SCRIPT)
            weights, biases = make_weights()
            arrays = {f"w:{k}": v for k, v in weights.items()} | {f"b:{k}": v for k, v in biases.items()}
            np.savez(weights_file, **arrays)
        self.log = directory / f"worker-{time.monotonic_ns()}.log"
        env = dict(os.environ, VEILML_TEST_RUN_DELAY=str(delay), **env)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), str(weights_file), str(port), str(MAX_PAYLOAD)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"the worker did not answer /health within {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker")


@pytest.fixture(scope="module")
def remote(worker_dir: Path):
    process = WorkerProcess(worker_dir, free_port())
    yield process
    process.kill()


def post(url: str, body: bytes, secret: str | None = None, **kwargs) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"} | ({"x-veilml-session-secret": secret} if secret else {})
    return httpx.post(url, content=body, headers=headers, timeout=10, **kwargs)


def open_session(url: str) -> tuple[str, str]:
    response = httpx.post(f"{url}/sessions", timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["session"], response.json()["secret"]


# -- results ----------------------------------------------------------------------------------------


def test_http_results_equal_local_bit_exact(remote: WorkerProcess) -> None:
    rng = np.random.default_rng(1)
    with HTTPTransport(remote.url) as transport:
        assert transport.backend == "clear"
        over_http, local = EncryptedLinearExecutor(transport, backend="clear"), local_executor()
        for info_http, info_local in zip(transport.layers().values(), local.infos.values(), strict=True):
            assert info_http.to_dict() == info_local.to_dict()
        for _ in range(2):
            cases = [
                ("forward", QKV, rng.normal(size=(5, 24))),
                ("forward", FC, rng.normal(size=(4, 32))),
                ("backward", FC, rng.normal(size=(3, 16))),
                ("backward", QKV, rng.normal(size=(2, 32))),
            ]
            for direction, name, rows in cases:
                remote_out = getattr(over_http, direction)(name, rows)
                np.testing.assert_array_equal(remote_out, getattr(local, direction)(name, rows))
        assert over_http.bytes_sent == local.bytes_sent and over_http.bytes_received == local.bytes_received
        assert transport.reregistrations == 0


def test_health_and_layers_describe_the_worker(remote: WorkerProcess) -> None:
    health = httpx.get(remote.url + "/health").json()
    assert health["status"] == "ok" and health["backend"] == "clear" and health["layers"] == 2
    document = httpx.get(remote.url + "/layers").json()
    assert document["backend"] == "clear" and document["input_bits"] == 8 and document["weight_bits"] == 8
    assert document["max_payload_bytes"] == MAX_PAYLOAD and document["fingerprint"] == health["fingerprint"]
    assert set(document["layers"]) == {QKV, FC}
    assert document["layers"][QKV]["d_in"] == 24 and document["layers"][QKV]["d_out"] == 32
    assert httpx.get(f"{remote.url}/layers/{FC}/forward/setup").content == b""


# -- errors -----------------------------------------------------------------------------------------


def test_bad_requests_get_their_status_and_a_clear_message(remote: WorkerProcess) -> None:
    url = remote.url
    session, secret = open_session(url)
    assert post(f"{url}/sessions/{session}/layers/{QKV}/forward/keys", b"", secret).status_code == 204

    def check(response: httpx.Response, status: int, *words: str) -> None:
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        for word in words:
            assert word in detail, detail

    check(httpx.get(f"{url}/layers/nope/forward/setup"), 404, "'nope'", QKV)
    check(post(f"{url}/sessions/{session}/layers/nope/forward/run", b"x", secret), 404, "does not serve layer 'nope'")
    check(httpx.get(f"{url}/layers/{QKV}/sideways/setup"), 400, "'sideways'", "'forward' or 'backward'")
    check(post(f"{url}/sessions/{session}/layers/{QKV}/sideways/keys", b"", secret), 400, "'forward' or 'backward'")
    run = f"{url}/sessions/{session}/layers/{QKV}/forward/run"
    check(post(run, b"garbage", secret), 400, "bad ciphertext", "not a packed integer array")
    check(post(run, b"", secret), 400, "empty ciphertext")
    corrupted = bytearray(pack_integers(np.zeros((2, 24))))
    corrupted[100] ^= 8  # a '(' in the .npy header: numpy raises a tokenizer error, not a ValueError
    check(post(run, bytes(corrupted), secret), 400, "bad ciphertext", "TokenError")
    check(post(run, pack_integers(np.zeros((2, 25))), secret), 400, "bad ciphertext", "(n, 24)", "(2, 25)")
    check(post(run, pack_integers(np.full((1, 24), 256)), secret), 400, "[0, 255]")
    check(post(run, pack_integers(np.zeros((2, 3, 4))), secret), 400, "2-D")
    check(post(f"{url}/sessions/{'cd' * 16}/layers/{QKV}/forward/run", pack_integers(np.zeros((1, 24))), secret), 401, "unknown session")
    check(post(run, pack_integers(np.zeros((1, 24))), "not-the-secret"), 403, "belongs to another client")
    check(post(run, pack_integers(np.zeros((1, 24)))), 403, "belongs to another client")
    check(post(f"{url}/sessions/NOT-HEX/layers/{QKV}/forward/run", b"", secret), 400, "hex")
    check(post(f"{url}/sessions/{'a' * 200}/layers/{QKV}/forward/run", b"", secret), 400, "16 to 128")
    check(post(run, b"\0" * (MAX_PAYLOAD + 1), secret), 413, f"limit of {MAX_PAYLOAD} bytes", "--max-payload-mb")
    chunked = post(run, iter([b"\0" * 4096] * (MAX_PAYLOAD // 4096 + 1)), secret)  # no Content-Length: counted as read
    check(chunked, 413, "more than", "fewer rows")
    check(httpx.get(f"{url}/nowhere"), 404, "/health")
    check(httpx.delete(f"{url}/layers"), 405, "DELETE")
    assert post(run, pack_integers(np.zeros((1, 24), np.int64)), secret).status_code == 200  # still serving


def test_transport_raises_the_workers_refusals(remote: WorkerProcess) -> None:
    with HTTPTransport(remote.url, backoff=5.0) as transport:  # a 4xx must not be retried: no 5 s waits
        start = time.monotonic()
        transport.layers()
        session = transport.open_session()
        for call, status, words in [
            (lambda: transport.setup("nope", "forward"), 404, "does not serve layer 'nope'"),
            (lambda: transport.setup(QKV, "sideways"), 400, "'forward' or 'backward'"),
            (lambda: transport.run(session, QKV, "forward", pack_integers(np.zeros((1, 24)))), 401, "register"),
        ]:
            with pytest.raises(RemoteWorkerError, match=words) as error:
                call()
            assert error.value.status == status
        transport.register(session, QKV, "forward", b"")
        for body, words in [(b"garbage", "not a packed integer array"), (pack_integers(np.zeros((2, 23))), r"\(n, 24\)")]:
            with pytest.raises(RemoteWorkerError, match=words) as error:
                transport.run(session, QKV, "forward", body)
            assert error.value.status == 400
        with pytest.raises(KeyError, match="not opened by this transport"):
            transport.run("ab" * 16, QKV, "forward", b"x")
        executor = EncryptedLinearExecutor(transport, backend="clear")
        with pytest.raises(RemoteWorkerError, match="over the worker's limit") as error:  # checked before sending
            executor.forward(QKV, np.ones((MAX_PAYLOAD // 8 // 24 + 1, 24)))
        assert error.value.status == 413
        assert time.monotonic() - start < 5.0


def test_transport_retries_5xx_and_connection_errors_then_gives_up() -> None:
    calls: list[str] = []
    statuses = iter([503, 500])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sessions":
            return httpx.Response(201, json={"session": "ab" * 16, "secret": "s" * 43})
        assert request.headers["x-veilml-session-secret"] == "s" * 43
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        status = next(statuses, 200)
        return httpx.Response(status, json={"detail": "busy"} if status != 200 else None, content=None if status != 200 else b"out")

    transport = HTTPTransport("http://worker", backoff=0.0, client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert transport.run(transport.open_session(), "l", "forward", b"in") == b"out"
    assert len(calls) == 4 and transport.retries_done == 3
    down = HTTPTransport(
        "http://worker",
        retries=2,
        backoff=0.0,
        client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(502, json={"detail": "bad gateway"}))),
    )
    with pytest.raises(RemoteWorkerError, match="failed 3 times.*502.*bad gateway") as error:
        down.setup("l", "forward")
    assert error.value.status == 503


# -- keys: only evaluation keys reach the worker -------------------------------------------------------


class RecordingTransport:
    """Wraps a transport and keeps every evaluation key and ciphertext handed to it."""

    def __init__(self, inner: HTTPTransport) -> None:
        self.inner, self.keys, self.bodies = inner, {}, []
        self.backend = inner.backend

    def layers(self):
        return self.inner.layers()

    def open_session(self):
        return self.inner.open_session()

    def setup(self, layer, direction):
        return self.inner.setup(layer, direction)

    def register(self, session, layer, direction, keys):
        self.keys[(session, layer, direction)] = keys
        self.bodies.append(keys)
        self.inner.register(session, layer, direction, keys)

    def run(self, session, layer, direction, ciphertext):
        self.bodies.append(ciphertext)
        return self.inner.run(session, layer, direction, ciphertext)


def _in_process(worker: Worker, **options) -> tuple[HTTPTransport, list[bytes]]:
    """HTTPTransport over the app in this process, and the list of every request body it sends."""
    client = TestClient(create_app(worker, **options))
    wire: list[bytes] = []
    client.event_hooks = {"request": [lambda request: wire.append(request.read())]}
    return HTTPTransport("http://testserver", backoff=0.0, client=client), wire


def _reaches(obj, found, seen=None) -> bool:
    """Whether ``obj`` reaches an object for which ``found`` is true, through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if found(obj):
        return True
    if isinstance(obj, dict):
        return any(_reaches(k, found, seen) or _reaches(v, found, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_reaches(v, found, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return any(_reaches(v, found, seen) for v in vars(obj).values())
    return False


def test_worker_keeps_exactly_the_evaluation_keys_sent() -> None:
    weights, biases = make_weights()
    worker = clear_worker(weights, biases)
    transport, wire = _in_process(worker)
    recording = RecordingTransport(transport)
    executor = EncryptedLinearExecutor(recording, backend="clear")
    rng = np.random.default_rng(2)
    for name, d_in, d_out in ((QKV, 24, 32), (FC, 32, 16)):
        executor.forward(name, rng.normal(size=(3, d_in)))
        executor.backward(name, rng.normal(size=(3, d_out)))
    sent = recording.keys
    # the clear backend's (empty) keys serve every matrix: sent once per worker
    assert set(sent) == {(executor.sessions[0], "*", "*")}
    assert worker.session_keys == sent and all(type(k) is bytes for k in worker.session_keys.values())
    assert [body for body in wire if body] == [body for body in recording.bodies if body]
    assert not _reaches(worker, lambda obj: isinstance(obj, type(executor.session)))


@pytest.mark.execute
def test_concrete_worker_holds_no_secret_key() -> None:
    from concrete import fhe

    rng = np.random.default_rng(3)
    worker = Worker({"tiny": rng.normal(size=(8, 6))}, backend="concrete")
    transport, wire = _in_process(worker)
    recording = RecordingTransport(transport)
    executor = EncryptedLinearExecutor(recording)
    reference = EncryptedLinearExecutor(LocalTransport(clear_worker({"tiny": worker.weights["tiny"]})), backend="clear")
    x, g = rng.normal(size=(2, 8)), rng.normal(size=(1, 6))
    np.testing.assert_array_equal(executor.forward("tiny", x), reference.forward("tiny", x))  # exact backend
    np.testing.assert_array_equal(executor.backward("tiny", g), reference.backward("tiny", g))

    assert worker.session_keys == recording.keys and len(worker.session_keys) == 2
    assert not _reaches(worker, lambda obj: isinstance(obj, type(executor.session)))

    def secret_keys(obj) -> bool:  # concrete's circuits carry a Client of their own, but never with keys
        keys = obj.keys if isinstance(obj, fhe.Client) else obj if isinstance(obj, fhe.Keys) else None
        return keys is not None and keys.are_generated

    assert not _reaches(worker, secret_keys) and _reaches(executor.session, secret_keys)
    secrets_ = []
    for name in ("tiny/forward", "tiny/backward"):
        keyset = executor.session._clients[name].keys._keyset
        secrets_ += [key.serialize() for key in keyset.get_client_keys().get_secret_keys()]
        assert _key_material(secrets_[-1]) in keyset.serialize()  # the search below finds the key where it is
    for stored in worker.session_keys.values():
        payload = unpack_envelope(stored, "evaluation-keys").payload
        keys = fhe.EvaluationKeys.deserialize(payload)  # what the worker can make of them: server keys only
        assert keys._fields == ("server_keyset",) and not hasattr(keys.server_keyset, "get_client_keys")
        with pytest.raises(RuntimeError):  # not a key set holding secret keys: nothing to decrypt with
            fhe.Keys.deserialize(payload)
    for secret in secrets_:
        assert len(secret) > 1000
        body = _key_material(secret)
        windows = [body[i : i + 128] for i in range(0, len(body) - 128, 512)]
        for request in wire:
            assert not any(window in request for window in windows)


def _key_material(serialized_secret_key: bytes) -> bytes:
    return serialized_secret_key[len(serialized_secret_key) // 4 :]  # well past the header


# -- lost keys: restarts and eviction --------------------------------------------------------------------


def test_worker_killed_mid_run_and_restarted(worker_dir: Path) -> None:
    port = free_port()
    slow = WorkerProcess(worker_dir, port, delay=1.0)
    restarted = None
    try:
        transport = HTTPTransport(slow.url, backoff=0.1)
        executor, local = EncryptedLinearExecutor(transport, backend="clear"), local_executor()
        rng = np.random.default_rng(4)
        x1, x2, g = rng.normal(size=(2, 24)), rng.normal(size=(3, 24)), rng.normal(size=(2, 32))
        np.testing.assert_array_equal(executor.forward(QKV, x1), local.forward(QKV, x1))  # registers the keys
        outcome: dict[str, object] = {}

        def call() -> None:
            try:
                outcome["y"] = executor.forward(QKV, x2)
            except Exception as error:  # noqa: BLE001 (reported below)
                outcome["error"] = error

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.4)  # the worker is sleeping inside run
        slow.kill()
        restarted = WorkerProcess(worker_dir, port)  # same port, same weights, no session keys
        thread.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        np.testing.assert_array_equal(outcome["y"], local.forward(QKV, x2))
        assert transport.reregistrations == 1 and transport.retries_done >= 1  # the run in flight was sent again
        np.testing.assert_array_equal(executor.backward(QKV, g), local.backward(QKV, g))
        np.testing.assert_array_equal(executor.forward(QKV, x1), local.forward(QKV, x1))
        assert transport.reregistrations == 1
    finally:
        slow.kill()
        if restarted is not None:
            restarted.kill()


def test_evicted_session_reregisters_transparently() -> None:
    weights, biases = make_weights()
    worker = clear_worker(weights, biases)
    app_client = TestClient(create_app(worker, max_sessions=1))
    first = HTTPTransport("http://testserver", backoff=0.0, client=app_client)
    second = HTTPTransport("http://testserver", backoff=0.0, client=app_client)
    a, b = EncryptedLinearExecutor(first, backend="clear"), EncryptedLinearExecutor(second, backend="clear")
    local = local_executor()
    x = np.random.default_rng(5).normal(size=(2, 32))
    a.forward(FC, x)
    b.forward(FC, x)  # opening b's session evicts a's
    assert set(worker.sessions) == {b.sessions[0]}
    np.testing.assert_array_equal(a.forward(FC, x), local.forward(FC, x))
    assert first.reregistrations == 1 and first.reopened_sessions == 1 and len(worker.sessions) == 1
    assert a.sessions[0] not in worker.sessions  # the worker knows a's new session under a new id


def test_garbage_evaluation_keys_are_refused_at_registration() -> None:
    weights, biases = make_weights()
    client = TestClient(create_app(clear_worker(weights, biases)))
    grant = client.post("/sessions").json()
    response = client.post(
        f"/sessions/{grant['session']}/layers/{FC}/forward/keys", content=b"not keys", headers={"x-veilml-session-secret": grant["secret"]}
    )
    assert response.status_code == 400 and "not evaluation keys" in response.json()["detail"]


def test_key_memory_bound_evicts_oldest_sessions(monkeypatch) -> None:
    from veilml.runtime.linear.clear import ClearServer
    from veilml.runtime.service import create_app as make

    monkeypatch.setattr(ClearServer, "check_keys", lambda self, keys: None)  # any bytes count as keys here
    weights, biases = make_weights()
    worker = clear_worker(weights, biases)
    client = TestClient(make(worker, max_key_bytes=100))
    grants = [client.post("/sessions").json() for _ in range(4)]
    for grant, size in zip(grants, [40, 40, 40]):
        url = f"/sessions/{grant['session']}/layers/{FC}/forward/keys"
        assert client.post(url, content=b"k" * size, headers={"x-veilml-session-secret": grant["secret"]}).status_code == 204
    assert sorted(s for s, _, _ in worker.session_keys) == sorted(g["session"] for g in grants[1:3])
    url = f"/sessions/{grants[3]['session']}/layers/{FC}/forward/keys"
    response = client.post(url, content=b"k" * 101, headers={"x-veilml-session-secret": grants[3]["secret"]})
    assert response.status_code == 413 and "--max-key-mb" in response.json()["detail"]


def test_restarted_worker_with_other_weights_is_refused() -> None:
    weights, biases = make_weights()
    transport = HTTPTransport("http://testserver", backoff=0.0, client=TestClient(create_app(clear_worker(weights, biases))))
    executor = EncryptedLinearExecutor(transport, backend="clear")
    executor.forward(FC, np.ones((1, 32)))
    other, other_biases = make_weights(seed=9)
    transport._client = TestClient(create_app(clear_worker(other, other_biases)))  # "restarted" with another model
    with pytest.raises(RemoteWorkerError, match="different layers or weights") as error:
        executor.forward(FC, np.ones((1, 32)))
    assert error.value.status == 409


def test_layer_names_with_slashes_route() -> None:
    worker = clear_worker({"blocks/0/attn.c_proj": np.eye(16)})
    executor = EncryptedLinearExecutor(HTTPTransport("http://testserver", client=TestClient(create_app(worker))), backend="clear")
    x = np.random.default_rng(6).normal(size=(2, 16))
    np.testing.assert_array_equal(executor.forward("blocks/0/attn.c_proj", x), local_forward(worker, "blocks/0/attn.c_proj", x))


def local_forward(worker: Worker, name: str, x: np.ndarray) -> np.ndarray:
    return EncryptedLinearExecutor(LocalTransport(worker), backend="clear").forward(name, x)


# -- the command line ------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "veilml", *args], check=False, capture_output=True, text=True, timeout=timeout)


def test_cli_help_and_light_import() -> None:
    out = _cli("--help")
    assert out.returncode == 0 and "worker" in out.stdout
    out = _cli("worker", "--help")
    for option in ("--weights", "--layers", "--backend", "--weight-bits", "--input-bits", "--host", "--port", "--max-payload-mb"):
        assert option in out.stdout
    assert _cli().returncode == 2
    code = "import sys, veilml.cli; print([m for m in ('numpy', 'fastapi', 'uvicorn', 'httpx', 'torch') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_cli_refuses_missing_or_wrong_weights(tmp_path: Path) -> None:
    out = _cli("worker", "--weights", str(tmp_path / "missing"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = _cli("worker", "--weights", str(tmp_path), "--port", "70000")
    assert out.returncode == 2 and "65535" in out.stderr
    out = _cli("worker", "--weights", str(tmp_path), "--backend", "nope")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_cli_serves_a_safetensors_file(tmp_path: Path) -> None:
    weights_module = require("veilml.models.lora.weights", "lora")
    weights, biases = make_weights()
    file = weights_module.save_remote_weights({k: (w, biases.get(k)) for k, w in weights.items()}, tmp_path / "w.safetensors")
    port = free_port()
    log = tmp_path / "cli.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "veilml", "worker", "--weights", str(file), "--layers", "*.q_proj", "--port", str(port), "--backend", "clear"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 40
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with HTTPTransport(url) as transport:
            assert set(transport.layers()) == {QKV}
            executor = EncryptedLinearExecutor(transport, backend="clear")
            stored = {QKV: weights[QKV].astype(np.float32)}  # the file holds float32
            local = EncryptedLinearExecutor(LocalTransport(clear_worker(stored, {QKV: biases[QKV].astype(np.float32)})), backend="clear")
            x = np.random.default_rng(7).normal(size=(2, 24))
            np.testing.assert_array_equal(executor.forward(QKV, x), local.forward(QKV, x))
        text = log.read_text()
        assert f"listening on {url}" in text and QKV in text and "(24 -> 32)" in text
    finally:
        process.kill()
        process.wait(timeout=10)


# -- hostile peers against a real worker process (issue 6) ------------------------------------------------


def test_readme_client_refuses_a_plaintext_worker_over_http(remote: WorkerProcess) -> None:
    """Finding 2: a client written as in the README sent plain codes to a 'simulate' worker, silently."""
    from veilml.runtime.linear.protocol import InsecureBackendError

    with HTTPTransport(remote.url) as transport:
        with pytest.raises(InsecureBackendError, match="UNENCRYPTED"):
            EncryptedLinearExecutor(transport)
    out = _cli("worker", "--help")
    assert "default: concrete" in " ".join(out.stdout.split())


def test_another_client_cannot_take_over_a_session_and_ids_stay_out_of_the_log(remote: WorkerProcess) -> None:
    """Finding 3: anyone could overwrite a session's keys; session ids appeared in the access log."""
    with HTTPTransport(remote.url) as transport:
        victim = EncryptedLinearExecutor(transport, backend="clear")
        x = np.random.default_rng(8).normal(size=(2, 32))
        expected = local_executor().forward(FC, x)
        np.testing.assert_array_equal(victim.forward(FC, x), expected)
        session, secret = transport._sessions[victim.sessions[0]]
        _, other_secret = open_session(remote.url)
        for path in (f"/sessions/{session}/keys", f"/sessions/{session}/layers/{FC}/forward/keys"):
            for attacker in (other_secret, None):
                response = post(remote.url + path, b"junk", attacker)
                assert response.status_code == 403 and response.json()["code"] == "forbidden", response.text
        run = f"{remote.url}/sessions/{session}/layers/{FC}/forward/run"
        assert post(run, pack_integers(np.zeros((1, 32))), other_secret).status_code == 403
        np.testing.assert_array_equal(victim.forward(FC, x), expected)  # the victim is unaffected
        assert transport.reregistrations == 0
    log = remote.log.read_text()
    assert "POST /sessions/{session}/layers/" in log  # the access log is there, redacted
    assert session not in log and session[:8] not in log and secret not in log and other_secret not in log


def test_stalled_uploads_are_capped_timed_out_and_freed(worker_dir: Path) -> None:
    """Finding 5: stalled uploads had no read timeout and no cap across requests, and were not freed."""
    cap = 4 * MAX_PAYLOAD
    worker = WorkerProcess(worker_dir, free_port(), VEILML_TEST_INFLIGHT=str(cap), VEILML_TEST_READ_TIMEOUT="1")
    sockets = []
    try:
        session, secret = open_session(worker.url)
        path = f"/sessions/{session}/layers/{FC}/forward/run"
        for _ in range(6):  # each announces ~MAX_PAYLOAD bytes, sends 1000 and stalls
            s = socket.create_connection(("127.0.0.1", worker.port))
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\n"
                f"x-veilml-session-secret: {secret}\r\ncontent-length: {MAX_PAYLOAD - 10}\r\n\r\n".encode() + b"\0" * 1000
            )
            sockets.append(s)
        answers = [_read_status(s) for s in sockets]  # every stalled request is answered by the worker itself
        assert sorted(answers) == [408] * 4 + [503] * 2, answers  # 4 fit under the cap, 2 were refused at once
        assert httpx.get(worker.url + "/health").json()["bytes_in_flight"] == 0  # all freed
        with HTTPTransport(worker.url) as transport:  # and a well-behaved client is served
            x = np.ones((1, 32))
            np.testing.assert_array_equal(EncryptedLinearExecutor(transport, backend="clear").forward(FC, x), local_executor().forward(FC, x))
    finally:
        for s in sockets:
            s.close()
        worker.kill()


def _read_status(s: socket.socket) -> int:
    s.settimeout(20)
    head = s.recv(64)
    return int(head.split()[1])


def test_access_token_decides_who_may_query() -> None:
    weights, biases = make_weights()
    token = "t" * 43
    client = TestClient(create_app(clear_worker(weights, biases), access_token=token))
    assert client.get("/health").status_code == 200  # liveness stays open
    refused = client.get("/layers")
    assert refused.status_code == 401 and refused.json()["code"] == "access-token" and refused.headers["www-authenticate"] == "Bearer"
    assert client.post("/sessions", headers={"authorization": "Bearer " + "u" * 43}).status_code == 403
    transport = HTTPTransport("http://testserver", backoff=0.0, access_token=token, client=client)
    x = np.ones((2, 32))
    np.testing.assert_array_equal(EncryptedLinearExecutor(transport, backend="clear").forward(FC, x), local_executor().forward(FC, x))
    with pytest.raises(RemoteWorkerError, match="access token") as error:
        HTTPTransport("http://testserver", backoff=0.0, client=client).layers()
    assert error.value.status == 401
