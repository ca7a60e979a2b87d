"""The HTTP worker: a real worker process on loopback, HTTPTransport, errors, keys, restarts, the CLI, README claims."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from requires import require

require("fastapi", "worker")
require("uvicorn", "worker")
httpx = require("httpx", "worker")

from fastapi.testclient import TestClient
from worker_helpers import (
    CLIWorker,
    answers_health,
    files_bytes,
    free_port,
    held_bytes,
    holding,
    key_windows,
    reachable,
    wait_for,
)

from veilml.linear import (
    ALL,
    DIRECTIONS,
    EncryptedLinearExecutor,
    LocalTransport,
    Worker,
)
from veilml.linear.clear import pack_integers
from veilml.linear.limits import DEFAULT_MAX_ROWS
from veilml.linear.service import create_app
from veilml.linear.transport import HTTPTransport, RemoteWorkerError
from veilml.runtime.envelope import unpack_envelope

pytestmark = pytest.mark.timeout(60)

QKV, FC = "model.layers.0.q_proj", "model.layers.0.mlp.fc"
MAX_PAYLOAD = 64 * 1024

WORKER_SCRIPT = """
import itertools, os, sys, threading
from pathlib import Path
import numpy as np
from veilml.cli import serve
from veilml.linear import Worker

data = np.load(sys.argv[1])
weights = {k[2:]: data[k] for k in data.files if k.startswith("w:")}
biases = {k[2:]: data[k] for k in data.files if k.startswith("b:")}
worker = Worker(weights, biases, backend="clear")
hang_at = int(os.environ.get("VEILML_TEST_HANG_AT_RUN", "0"))
if hang_at:  # a worker that hangs inside its hang_at-th run, to be killed in the middle of it
    work, calls = worker.work, itertools.count(1)
    def hanging_work(*args):
        if next(calls) >= hang_at:
            Path(os.environ["VEILML_TEST_RUN_MARKER"]).write_text("inside run")  # the test waits for this
            threading.Event().wait()  # until killed
        return work(*args)
    worker.work = hanging_work
options = {"max_inflight_bytes": int(os.environ.get("VEILML_TEST_INFLIGHT", str(2**30))),
           "read_timeout": float(os.environ.get("VEILML_TEST_READ_TIMEOUT", "30")),
           "upload_timeout": float(os.environ.get("VEILML_TEST_UPLOAD_TIMEOUT", "300"))}
serve(worker, host="127.0.0.1", port=int(sys.argv[2]), log_level="info", max_payload_bytes=int(sys.argv[3]), **options)
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


class WorkerProcess:
    """A worker started as its own Python process on loopback (``wait=False``: call ``wait_ready`` later)."""

    def __init__(self, directory: Path, port: int, hang_at_run: int = 0, wait: bool = True, **env: str) -> None:
        self.directory, self.port, self.url = directory, port, f"http://127.0.0.1:{port}"
        script, weights_file = directory / "worker.py", directory / "weights.npz"
        if not script.exists():
            script.write_text(WORKER_SCRIPT)
            weights, biases = make_weights()
            arrays = {f"w:{k}": v for k, v in weights.items()} | {f"b:{k}": v for k, v in biases.items()}
            np.savez(weights_file, **arrays)
        stamp = time.monotonic_ns()
        self.log = directory / f"worker-{stamp}.log"
        self.marker = directory / f"in-run-{stamp}"  # written by a hanging worker once it is inside run
        env = dict(os.environ, VEILML_TEST_HANG_AT_RUN=str(hang_at_run), VEILML_TEST_RUN_MARKER=str(self.marker), **env)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), str(weights_file), str(port), str(MAX_PAYLOAD)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            self.wait_ready()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.text()}")
        return answers_health(self.url)

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_for(self.ready, timeout, "the worker answering /health", self.text)
        except BaseException:
            self.kill()
            raise

    def in_flight(self) -> int:
        return httpx.get(self.url + "/health", timeout=5.0).json()["bytes_in_flight"]

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
    limits = ("max_rows", "max_payload_bytes", "max_key_bytes")
    assert [health[k] for k in limits] == [document[k] for k in limits] and health["max_rows"] == DEFAULT_MAX_ROWS
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
    check(
        post(f"{url}/sessions/{'cd' * 16}/layers/{QKV}/forward/run", pack_integers(np.zeros((1, 24))), secret),
        401,
        "unknown session",
    )
    check(post(run, pack_integers(np.zeros((1, 24))), "not-the-secret"), 403, "belongs to another client")
    check(post(run, pack_integers(np.zeros((1, 24)))), 401, "needs the secret")
    check(post(f"{url}/sessions/NOT-HEX/layers/{QKV}/forward/run", b"", secret), 400, "hex")
    check(post(f"{url}/sessions/{'a' * 200}/layers/{QKV}/forward/run", b"", secret), 400, "16 to 128")
    check(post(run, b"\0" * (MAX_PAYLOAD + 1), secret), 413, f"limit of {MAX_PAYLOAD} bytes", "--max-payload-mb")
    chunked = post(run, iter([b"\0" * 4096] * (MAX_PAYLOAD // 4096 + 1)), secret)  # no Content-Length: counted as read
    check(chunked, 413, "more than", "fewer rows")
    check(httpx.get(f"{url}/nowhere"), 404, "/health")
    check(httpx.delete(f"{url}/layers"), 405, "DELETE")
    assert post(run, pack_integers(np.zeros((1, 24), np.int64)), secret).status_code == 200  # still serving


def test_transport_raises_the_workers_refusals(remote: WorkerProcess) -> None:
    """A 4xx is the client's problem: raised at once, never sent again (counted on the wire, not timed)."""
    sent: list[str] = []
    client = httpx.Client(timeout=10, event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    with HTTPTransport(remote.url, retries=3, backoff=0.0, client=client) as transport:

        def one_request(call, status: int, words: str) -> None:
            before = len(sent)
            with pytest.raises(RemoteWorkerError, match=words) as error:
                call()
            assert error.value.status == status
            assert len(sent) == before + 1, sent[before:]  # sent once: no retry, no re-registration

        transport.layers()
        session = transport.open_session()
        one_request(lambda: transport.setup("nope", "forward"), 404, "does not serve layer 'nope'")
        one_request(lambda: transport.setup(QKV, "sideways"), 400, "'forward' or 'backward'")
        one_request(lambda: transport.run(session, QKV, "forward", pack_integers(np.zeros((1, 24)))), 401, "register")
        transport.register(session, QKV, "forward", b"")
        one_request(lambda: transport.run(session, QKV, "forward", b"garbage"), 400, "not a packed integer array")
        one_request(lambda: transport.run(session, QKV, "forward", pack_integers(np.zeros((2, 23)))), 400, r"\(n, 24\)")
        before = len(sent)
        with pytest.raises(KeyError, match="not opened by this transport"):
            transport.run("ab" * 16, QKV, "forward", b"x")
        executor = EncryptedLinearExecutor(transport, backend="clear")
        with pytest.raises(RemoteWorkerError, match="over the worker's limit") as error:  # checked before sending
            executor.forward(QKV, np.ones((MAX_PAYLOAD // 8 // 24 + 1, 24)))
        assert error.value.status == 413
        assert not [path for path in sent[before:] if path.endswith("/run")]  # the refused ciphertext was never sent
        assert transport.retries_done == transport.reregistrations == transport.reopened_sessions == 0


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
        return httpx.Response(
            status, json={"detail": "busy"} if status != 200 else None, content=None if status != 200 else b"out"
        )

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


def _in_process(worker: Worker, **options) -> tuple[HTTPTransport, list[tuple[str, bytes]], object]:
    """HTTPTransport over the app in this process, every request it sends as (path, body), and the app."""
    app = create_app(worker, **options)
    client = TestClient(app)
    wire: list[tuple[str, bytes]] = []
    client.event_hooks = {"request": [lambda request: wire.append((request.url.path, request.read()))]}
    return HTTPTransport("http://testserver", backoff=0.0, client=client), wire, app


def test_the_transport_takes_its_limits_from_the_worker() -> None:
    weights, biases = make_weights()
    worker = Worker(weights, biases, backend="clear", max_rows=3)
    transport, wire, _ = _in_process(worker, max_payload_bytes=MAX_PAYLOAD)
    assert (transport.max_rows, transport.max_payload_bytes) == (3, MAX_PAYLOAD)
    health = transport.health()
    assert (health["max_rows"], health["max_payload_bytes"]) == (3, MAX_PAYLOAD)
    executor = EncryptedLinearExecutor(transport, backend="clear")
    assert executor.max_rows(QKV) == 3
    rows = np.random.default_rng(5).normal(size=(7, 24))
    reference = EncryptedLinearExecutor(LocalTransport(clear_worker(weights, biases)), backend="clear")
    np.testing.assert_array_equal(executor.forward(QKV, rows), reference.forward(QKV, rows))
    assert sum(path.endswith("/run") for path, _ in wire) == 3  # 3 + 3 + 1 rows: the worker's limit, not 4096
    # a worker that does not publish its limits (before they were published): the defaults
    older = {"backend": "clear", "fingerprint": "0" * 32, "layers": {}}
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=older)))
    with HTTPTransport("http://older", client=client) as old:
        assert (old.max_rows, old.max_payload_bytes) == (DEFAULT_MAX_ROWS, None)


TINY = {"tiny.q": (8, 6), "tiny.fc": (6, 4)}


@pytest.fixture(scope="module")
def concrete_service(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two concrete workers, one tiny layer each, behind HTTP apps in this process with one circuit cache;
    a client ran forward and backward through both (``EncryptedLinearExecutor([a, b])``)."""
    from veilml.linear.concrete import ConcreteBackend

    rng = np.random.default_rng(3)
    weights = {name: rng.normal(size=shape) for name, shape in TINY.items()}
    cache = tmp_path_factory.mktemp("concrete-circuits")
    backend = ConcreteBackend(cache_dir=cache)
    workers = [Worker({name: weight}, backend=backend) for name, weight in weights.items()]
    served = [_in_process(worker) for worker in workers]
    recordings = [RecordingTransport(transport) for transport, _, _ in served]
    executor = EncryptedLinearExecutor(recordings)
    reference = EncryptedLinearExecutor(LocalTransport(clear_worker(weights)), backend="clear")
    results = []
    for name, (d_in, d_out) in TINY.items():
        x, g = rng.normal(size=(2, d_in)), rng.normal(size=(1, d_out))
        results += [
            (executor.forward(name, x), reference.forward(name, x)),
            (executor.backward(name, g), reference.backward(name, g)),
        ]
    return SimpleNamespace(
        workers=workers,
        apps=[app for _, _, app in served],
        wires=[wire for _, wire, _ in served],
        recordings=recordings,
        executor=executor,
        cache=cache,
        results=results,
    )


@pytest.mark.execute
def test_worker_keeps_exactly_the_evaluation_keys_sent(concrete_service: SimpleNamespace) -> None:
    from concrete import fhe

    service, client = concrete_service, concrete_service.executor.session
    assert service.executor.routes == dict(zip(TINY, service.recordings))  # each layer goes to its worker
    for worker, recording, wire, session, name in zip(
        service.workers, service.recordings, service.wires, service.executor.sessions, TINY
    ):
        sent = recording.keys
        assert set(sent) == {(session, name, direction) for direction in DIRECTIONS}  # one key per matrix, its own
        assert worker.session_keys == sent  # all it keeps, for every session
        for (_, layer, direction), stored in worker.session_keys.items():
            assert type(stored) is bytes
            own = client._clients[f"{layer}/{direction}"]._client.evaluation_keys.serialize()  # the client's evaluation keys
            assert own and unpack_envelope(stored, "evaluation-keys").payload == own
            fhe.EvaluationKeys.deserialize(own)  # evaluation keys indeed, not a key set
        # on the wire: the key requests carried exactly these bytes, and every body is one the client handed over
        assert sorted(body for path, body in wire if path.endswith("/keys")) == sorted(sent.values())
        assert [body for _, body in wire if body] == [body for body in recording.bodies if body]
    assert not any(isinstance(obj, type(client)) for obj in reachable(*service.workers, *(app.state for app in service.apps)))


@pytest.mark.execute
def test_concrete_worker_holds_no_secret_key(concrete_service: SimpleNamespace) -> None:
    from concrete import fhe

    service = concrete_service
    for encrypted, clear in service.results:
        np.testing.assert_array_equal(encrypted, clear)  # an exact backend
    client = service.executor.session
    secrets_ = []
    for name in client._clients:
        keyset = client._clients[name]._client.keys._keyset
        secrets_ += [key.serialize() for key in keyset.get_client_keys().get_secret_keys()]
    assert len(secrets_) == 2 * len(TINY)  # one secret key per matrix, each its own
    windows = [window for secret in secrets_ for window in key_windows(secret)]

    def secret_keys(obj) -> bool:  # concrete's circuits carry a Client of their own, but never with keys
        keys = obj.keys if isinstance(obj, fhe.Client) else obj if isinstance(obj, fhe.Keys) else None
        return keys is not None and keys.are_generated

    # the probe finds every secret key where it is: in the client's session, walked like the workers below
    found = [blob for blob in held_bytes(client) if holding([blob], windows)]
    assert all(any(window in blob for blob in found) for window in windows)
    assert any(secret_keys(obj) for obj in reachable(client))
    # the workers: their objects, the apps' state, everything they received, the files of their circuit cache
    holds = (*service.workers, *(app.state for app in service.apps))
    assert not any(secret_keys(obj) for obj in reachable(*holds))
    assert holding(held_bytes(*holds), windows) == []
    assert holding((body for wire in service.wires for _, body in wire), windows) == []
    files = list(files_bytes(service.cache))
    assert len(files) > 4 * 2 * len(TINY) and holding(files, windows) == []  # 4 files a circuit, server.zip read inside too
    for worker in service.workers:
        for stored in worker.session_keys.values():
            payload = unpack_envelope(stored, "evaluation-keys").payload
            keys = fhe.EvaluationKeys.deserialize(payload)  # what a worker can make of them: server keys only
            assert keys._fields == ("server_keyset",) and not hasattr(keys.server_keyset, "get_client_keys")
            with pytest.raises(RuntimeError):  # not a key set holding secret keys: nothing to decrypt with
                fhe.Keys.deserialize(payload)


# -- lost keys: restarts and eviction --------------------------------------------------------------------


def test_worker_killed_mid_run_and_restarted(worker_dir: Path) -> None:
    port = free_port()
    hanging = WorkerProcess(worker_dir, port, hang_at_run=2)  # serves one run, then hangs inside the next
    restarted = None
    try:
        transport = HTTPTransport(hanging.url, backoff=0.1)
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
        wait_for(hanging.marker.exists, 30, "the worker inside its second run", hanging.text)
        hanging.kill()  # the request is in flight: the worker holds it and never answers
        assert "y" not in outcome and "error" not in outcome
        restarted = WorkerProcess(worker_dir, port)  # same port, same weights, no session keys
        thread.join(timeout=30)
        assert not thread.is_alive(), "the client did not get over the restart"
        assert "error" not in outcome, outcome.get("error")
        np.testing.assert_array_equal(outcome["y"], local.forward(QKV, x2))
        assert transport.reregistrations == 1 and transport.retries_done >= 1  # the run in flight was sent again
        np.testing.assert_array_equal(executor.backward(QKV, g), local.backward(QKV, g))
        np.testing.assert_array_equal(executor.forward(QKV, x1), local.forward(QKV, x1))
        assert transport.reregistrations == 1
    finally:
        hanging.kill()
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
        f"/sessions/{grant['session']}/layers/{FC}/forward/keys",
        content=b"not keys",
        headers={"x-veilml-session-secret": grant["secret"]},
    )
    assert response.status_code == 400 and "not evaluation keys" in response.json()["detail"]


def test_key_memory_bound_evicts_oldest_sessions(monkeypatch) -> None:
    from veilml.linear.clear import ClearServer
    from veilml.linear.service import create_app as make

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
            [
                sys.executable,
                "-m",
                "veilml",
                "worker",
                "--weights",
                str(file),
                "--layers",
                "*.q_proj",
                "--port",
                str(port),
                "--backend",
                "clear",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: process.poll() is not None or answers_health(url), 40, "the CLI worker answering /health", log.read_text)
        assert process.poll() is None, log.read_text()  # it answered, rather than exited
        with HTTPTransport(url) as transport:
            assert set(transport.layers()) == {QKV}
            executor = EncryptedLinearExecutor(transport, backend="clear")
            stored = {QKV: weights[QKV].astype(np.float32)}  # the file holds float32
            local = EncryptedLinearExecutor(
                LocalTransport(clear_worker(stored, {QKV: biases[QKV].astype(np.float32)})), backend="clear"
            )
            x = np.random.default_rng(7).normal(size=(2, 24))
            np.testing.assert_array_equal(executor.forward(QKV, x), local.forward(QKV, x))
        text = log.read_text()
        assert f"listening on {url}" in text and QKV in text and "(24 -> 32)" in text
    finally:
        process.kill()
        process.wait(timeout=10)


# -- README claims: encrypting workers over HTTP ------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(worker_dir: Path) -> Path:
    """make_weights() as ``veilml worker --weights`` reads them (float32 safetensors)."""
    weights_module = require("veilml.models.lora.weights", "lora")
    weights, biases = make_weights()
    return weights_module.save_remote_weights({k: (w, biases.get(k)) for k, w in weights.items()}, worker_dir / "w.safetensors")


def stored_executor(*names: str) -> EncryptedLinearExecutor:
    """The clear reference for the layers of ``weights_file``, with the float32 weights the file holds."""
    weights, biases = make_weights()
    stored = {n: weights[n].astype(np.float32) for n in names}
    return EncryptedLinearExecutor(
        LocalTransport(clear_worker(stored, {n: biases[n].astype(np.float32) for n in names if n in biases})), backend="clear"
    )


@pytest.mark.execute
@pytest.mark.timeout(180)  # a hang guard: keygen and a worker start on a loaded machine
def test_glwe_worker_over_http_is_within_the_error_bound(tmp_path: Path, weights_file: Path, key_cache: Path) -> None:
    """README: ``--backend glwe`` serves layers over HTTP, results within the documented error bound."""
    require("concrete_ml_extensions", "glwe")
    from veilml.linear.glwe import GLWEBackend
    from veilml.quantization import QuantizedWeight, backward_input, quantize_rows

    worker = CLIWorker(
        tmp_path, "--weights", str(weights_file), "--layers", "*.mlp.fc", "--backend", "glwe", "--log-level", "warning"
    )
    try:
        backend = GLWEBackend(insecure_key_cache=key_cache)  # tests only: one key pair for this run's glwe clients
        backend.session()._keys()  # made (~10 s) while the worker starts
        worker.wait_ready()
        with HTTPTransport(worker.url) as transport:
            assert EncryptedLinearExecutor(transport).backend.name == "glwe"  # what the README's client gets
            executor = EncryptedLinearExecutor(transport, backend=backend)  # the same backend, with the cached key pair
            reference, info = stored_executor(FC), executor.layer(FC)
            weight = make_weights()[0][FC].astype(np.float32)
            largest = int(np.abs(QuantizedWeight.from_float(weight, info.weight_bits).q).max())
            rng = np.random.default_rng(10)
            x, g = rng.normal(size=(3, 32)), rng.normal(size=(2, 16))
            y, y_clear = executor.forward(FC, x), reference.forward(FC, x)
            _, x_scale, _ = quantize_rows(x, info.input_bits)  # one integer of error is worth scale * weight_scale
            bound = backend.error_bound(info.spec("forward"), largest) * x_scale[:, None] * info.weight_scale[None, :]
            assert np.all(np.abs(y - y_clear) <= bound), np.abs(y - y_clear) / bound
            gx, gx_clear = executor.backward(FC, g), reference.backward(FC, g)
            _, g_scale, _ = quantize_rows(backward_input(g, info.weight_scale), info.input_bits)
            bound = backend.error_bound(info.spec("backward"), largest) * g_scale[:, None]
            assert np.all(np.abs(gx - gx_clear) <= bound), np.abs(gx - gx_clear) / bound
            assert not np.array_equal(y, y_clear) and not np.array_equal(gx, gx_clear)  # approximate: it was encrypted
            assert np.linalg.norm(y - x @ weight) / np.linalg.norm(x @ weight) < 0.05  # and close to the float product
            assert np.linalg.norm(gx - g @ weight.T) / np.linalg.norm(g @ weight.T) < 0.05
            assert transport.reregistrations == 0
    finally:
        worker.kill()
        print(worker.text())  # shown when the test fails


@pytest.mark.execute
def test_glwe_worker_keeps_the_compression_key_sent_and_no_private_key(key_cache: Path) -> None:
    fhext = require("concrete_ml_extensions", "glwe")
    from veilml.linear.glwe import GLWEBackend
    from veilml.linear.glwe.keys import COMPRESSION_KEYS

    backend = GLWEBackend(insecure_key_cache=key_cache)
    weights, _ = make_weights()
    worker = Worker({FC: weights[FC]}, backend=backend)
    transport, wire, app = _in_process(worker)
    recording = RecordingTransport(transport)
    executor = EncryptedLinearExecutor(recording, backend=backend)
    rng = np.random.default_rng(11)
    executor.forward(FC, rng.normal(size=(2, 32)))
    executor.backward(FC, rng.normal(size=(1, 16)))
    client = executor.session
    # exactly the keys sent: one compression key for every matrix of the worker, as the client made it
    session = executor.sessions[0]
    assert recording.keys == {(session, ALL, ALL): client._compression_key} and len(client._compression_key) > 1_000_000
    assert worker.session_keys == recording.keys
    assert [body for path, body in wire if path.endswith("/keys")] == [client._compression_key]
    # and nothing that decrypts: the probe finds the private key in the client's session, not in the worker
    windows = key_windows(client._private_key.serialize())
    found = [blob for blob in held_bytes(client) if holding([blob], windows)]
    assert all(any(window in blob for blob in found) for window in windows)
    holds = (worker, app.state, COMPRESSION_KEYS)  # the deserialized compression keys are shared in the process
    assert not any(isinstance(obj, fhext.PrivateKey) for obj in reachable(*holds))
    assert any(isinstance(obj, fhext.PrivateKey) for obj in reachable(client))
    assert holding(held_bytes(*holds), windows) == []
    assert holding((body for _, body in wire), windows) == []


@pytest.mark.timeout(180)  # a hang guard: two workers start on a loaded machine
def test_two_workers_each_serve_a_subset_of_layers(tmp_path: Path, weights_file: Path) -> None:
    """README: ``EncryptedLinearExecutor([HTTPTransport(a), HTTPTransport(b)])`` over workers started with ``--layers``.

    On the clear backend to stay fast (concrete would cost ~15 s more here); the same routing with the
    concrete backend and one key per matrix is checked in-process by ``concrete_service``.
    """
    common = ("--weights", str(weights_file), "--backend", "clear")
    a = CLIWorker(tmp_path, *common, "--layers", "*.q_proj", name="a")
    b = CLIWorker(tmp_path, *common, "--layers", "*.mlp.*", name="b")
    try:
        a.wait_ready()
        b.wait_ready()
        with HTTPTransport(a.url) as to_a, HTTPTransport(b.url) as to_b:
            assert set(to_a.layers()) == {QKV} and set(to_b.layers()) == {FC}
            executor = EncryptedLinearExecutor([to_a, to_b], backend="clear")
            assert executor.routes == {QKV: to_a, FC: to_b}
            reference = stored_executor(QKV, FC)
            rng = np.random.default_rng(12)
            for name, d_in, d_out in ((QKV, 24, 32), (FC, 32, 16)):
                x, g = rng.normal(size=(2, d_in)), rng.normal(size=(2, d_out))
                np.testing.assert_array_equal(executor.forward(name, x), reference.forward(name, x))
                np.testing.assert_array_equal(executor.backward(name, g), reference.backward(name, g))
            assert all(executor.sessions)  # a session on each worker
        for worker, own, other in ((a, QKV, FC), (b, FC, QKV)):  # each computed its own layers only (its access log)
            log = worker.text()
            assert f"/layers/{own}/forward/run 200" in log and f"/layers/{own}/backward/run 200" in log, log
            assert f"/layers/{other}/" not in log
    finally:
        a.kill()
        b.kill()
        print(a.text(), b.text(), sep="\n")  # shown when the test fails


# -- hostile peers against a real worker process (issue 6) ------------------------------------------------


def test_readme_client_refuses_a_plaintext_worker_over_http(remote: WorkerProcess) -> None:
    """Finding 2: a client written as in the README sent plain codes to a 'simulate' worker, silently."""
    from veilml.linear import InsecureBackendError

    with HTTPTransport(remote.url) as transport:
        with pytest.raises(InsecureBackendError, match="UNENCRYPTED"):
            EncryptedLinearExecutor(transport)
    out = _cli("worker", "--help")
    assert "default: bfv" in " ".join(out.stdout.split())


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
            for attacker, status, code in ((other_secret, 403, "forbidden"), (None, 401, "no-secret")):
                response = post(remote.url + path, b"junk", attacker)
                assert response.status_code == status and response.json()["code"] == code, response.text
        run = f"{remote.url}/sessions/{session}/layers/{FC}/forward/run"
        assert post(run, pack_integers(np.zeros((1, 32))), other_secret).status_code == 403
        np.testing.assert_array_equal(victim.forward(FC, x), expected)  # the victim is unaffected
        assert transport.reregistrations == 0
    log = remote.log.read_text()
    assert "POST /sessions/{session}/layers/" in log  # the access log is there, redacted
    assert session not in log and session[:8] not in log and secret not in log and other_secret not in log


def test_slow_uploads_hold_only_what_they_sent_and_are_timed_out(worker_dir: Path) -> None:
    """Finding 5 of an earlier review (stalled uploads had no read timeout) and finding 9 of issue 21: four
    uploads that announced ~MAX_PAYLOAD bytes each and trickled made every other client get 503, because
    the announced size was reserved. Bytes now count as they arrive; stalls and slow uploads are cut.

    The first worker's timeouts (30 s read, 300 s upload) cannot fire meanwhile; the second worker's
    (1 s read, 3 s upload) are the only clocks in the test.
    """
    held, cap = MAX_PAYLOAD - 10, 4 * MAX_PAYLOAD
    patient = WorkerProcess(worker_dir, free_port(), wait=False, VEILML_TEST_INFLIGHT=str(cap))
    timing_out = WorkerProcess(
        worker_dir,
        free_port(),
        wait=False,
        VEILML_TEST_INFLIGHT=str(cap),
        VEILML_TEST_READ_TIMEOUT="1",
        VEILML_TEST_UPLOAD_TIMEOUT="3",
    )
    sockets: list[socket.socket] = []

    def stall(worker: WorkerProcess, session: str, secret: str) -> socket.socket:
        """A request announcing ~MAX_PAYLOAD bytes that sends 1000 and stalls."""
        s = socket.create_connection(("127.0.0.1", worker.port))
        sockets.append(s)
        s.sendall(
            f"POST /sessions/{session}/layers/{FC}/forward/run HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\n"
            f"x-veilml-session-secret: {secret}\r\ncontent-length: {held}\r\n\r\n".encode()
            + b"\0" * 1000
        )
        return s

    def served(worker: WorkerProcess) -> None:
        with HTTPTransport(worker.url, retries=0) as transport:  # a 503 would raise, not be waited out
            x = np.ones((1, 32))
            np.testing.assert_array_equal(
                EncryptedLinearExecutor(transport, backend="clear").forward(FC, x), local_executor().forward(FC, x)
            )

    try:
        patient.wait_ready()
        timing_out.wait_ready()
        session, secret = open_session(patient.url)
        stalled = [stall(patient, session, secret) for _ in range(6)]  # they announce 1.5 times the cap
        wait_for(lambda: patient.in_flight() == 6 * 1000, 30, "6 stalled uploads holding what they sent", patient.text)
        served(patient)  # an honest client is served meanwhile (it got 503 before)
        for s in stalled:  # clients that go away free their share
            s.close()
        wait_for(lambda: patient.in_flight() == 0, 30, "the uploads of closed connections freed", patient.text)

        session, secret = open_session(timing_out.url)
        stalled = [stall(timing_out, session, secret) for _ in range(4)]
        assert [_read_status(s) for s in stalled] == [408] * 4  # every stalled request is answered by the worker itself
        trickle = stall(timing_out, session, secret)
        start = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(40):  # a byte every 0.5 s never stalls for 1 s, but the whole upload may take 3 s
                trickle.sendall(b"\0")
                if select.select([trickle], [], [], 0.5)[0]:  # the worker answered
                    break
        assert _read_status(trickle) == 408 and time.monotonic() - start < 15
        assert timing_out.in_flight() == 0  # all freed (before the answers went out)
        served(timing_out)
    finally:
        for s in sockets:
            s.close()
        patient.kill()
        timing_out.kill()


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
    assert (
        refused.status_code == 401
        and refused.json()["code"] == "access-token"
        and refused.headers["www-authenticate"] == "Bearer"
    )
    assert client.post("/sessions", headers={"authorization": "Bearer " + "u" * 43}).status_code == 403
    transport = HTTPTransport("http://testserver", backoff=0.0, access_token=token, client=client)
    x = np.ones((2, 32))
    np.testing.assert_array_equal(
        EncryptedLinearExecutor(transport, backend="clear").forward(FC, x), local_executor().forward(FC, x)
    )
    with pytest.raises(RemoteWorkerError, match="access token") as error:
        HTTPTransport("http://testserver", backoff=0.0, client=client).layers()
    assert error.value.status == 401
