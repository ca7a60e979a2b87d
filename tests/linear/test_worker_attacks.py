"""Issue 21 against a real ``veilml worker --backend bfv`` on loopback (findings 2, 4 and 9).

A hostile block plan and a deeply nested header are refused at once, a session flood evicts only the
flooder's sessions, and after each refused request the same worker serves an honest client exactly.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from requires import require

require("httpx", "worker")
require("tenseal", "bfv")

pytestmark = pytest.mark.execute  # a real worker process and real bfv encryption

from worker_helpers import CLIWorker  # noqa: E402

from veilml.linear import EncryptedLinearExecutor, LocalTransport, Worker  # noqa: E402
from veilml.linear.base import MatrixSpec, pack_frames, unpack_frames  # noqa: E402
from veilml.linear.bfv import BFVBackend  # noqa: E402
from veilml.linear.transport import HTTPTransport  # noqa: E402

LAYER = "model.layers.0.mlp.up_proj"
TOKENS = {"honest": "h" * 24, "attacker": "a" * 24}


@pytest.fixture(scope="module")
def bfv_worker(tmp_path_factory):
    from veilml.models.lora.weights import save_remote_weights
    from veilml.runtime.client import write_private_file

    directory = tmp_path_factory.mktemp("bfv-attacks")
    weight = (np.random.default_rng(0).normal(size=(64, 96)) * 0.1).astype(np.float32)  # as the worker reads it back
    save_remote_weights({LAYER: (weight, None)}, directory / "w.safetensors")
    tokens = write_private_file(directory / "tokens", "".join(f"{n} {t}\n" for n, t in TOKENS.items()).encode())
    worker = CLIWorker(
        directory,
        *("--weights", str(directory / "w.safetensors"), "--access-token-file", str(tokens)),
        *("--max-key-sets-per-client", "3", "--log-level", "info"),
    ).wait_ready()
    yield worker, weight
    worker.kill()


def _honest_forward_is_exact(worker: CLIWorker, weight: np.ndarray) -> None:
    x = np.random.default_rng(1).normal(size=(5, weight.shape[0]))
    with HTTPTransport(worker.url, access_token=TOKENS["honest"], retries=0) as transport:
        got = EncryptedLinearExecutor(transport, backend="bfv").forward(LAYER, x)
    reference = EncryptedLinearExecutor(LocalTransport(Worker({LAYER: weight}, backend="clear")), backend="clear")
    np.testing.assert_array_equal(got, reference.forward(LAYER, x))


def test_a_hostile_plan_or_header_is_refused_and_the_worker_serves_on(bfv_worker) -> None:
    """Finding 2: a (1, 2048, 1) plan made 8 rows cost 7 CPU s, 1 GB and a 120 MB answer; finding 9: a
    100k-deep JSON header raised RecursionError in the wire reader."""
    worker, weight = bfv_worker
    _honest_forward_is_exact(worker, weight)
    with HTTPTransport(worker.url, access_token=TOKENS["attacker"], retries=0) as transport:
        session_id = transport.open_session()
        info = transport.layers()[LAYER]
        session = BFVBackend().session()
        keys = session.register(LAYER, MatrixSpec(info.d_in, info.d_out, info.input_bits), transport.setup(LAYER, "forward"))
        transport.register(session_id, LAYER, "forward", keys)
        honest = session.encrypt(LAYER, np.random.default_rng(2).integers(0, 256, size=(8, info.d_in)))
        frames = unpack_frames(honest)
        header = json.loads(frames[0])
        header["plan"] = [1, 2048, 1, header["plan"][3]]
        hostile = pack_frames([json.dumps(header).encode(), *frames[1:]])
        nested = pack_frames([b"[" * 100_000 + b"]" * 100_000, *frames[1:]])
        session_path, secret = transport._sessions[session_id]
        url = f"{worker.url}/sessions/{session_path}/layers/{LAYER}/forward/run"
        headers = {"authorization": f"Bearer {TOKENS['attacker']}", "x-veilml-session-secret": secret}
        for body, words in ((hostile, "not this worker's plan"), (nested, "")):
            response = httpx.post(url, content=body, headers=headers, timeout=30)
            assert response.status_code == 400 and words in response.json()["detail"], response.text
            assert response.elapsed.total_seconds() < 5  # refused before any product
        assert httpx.post(url, content=honest, headers=headers, timeout=30).status_code == 200  # the honest plan runs
    _honest_forward_is_exact(worker, weight)
    assert "Traceback" not in worker.text()


def test_a_session_flood_evicts_only_the_flooders_sessions(bfv_worker) -> None:
    """Finding 4 on the worker: sessions opened in a loop evicted everyone else's (least recently used first)."""
    worker, weight = bfv_worker
    with HTTPTransport(worker.url, access_token=TOKENS["honest"], retries=0) as transport:
        executor = EncryptedLinearExecutor(transport, backend="bfv")
        x = np.random.default_rng(3).normal(size=(2, weight.shape[0]))
        first = executor.forward(LAYER, x)
        for _ in range(300):
            answer = httpx.post(worker.url + "/sessions", headers={"authorization": f"Bearer {TOKENS['attacker']}"}, timeout=10)
            assert answer.status_code == 201
        np.testing.assert_array_equal(executor.forward(LAYER, x), first)
        assert transport.reopened_sessions == 0 and transport.reregistrations == 0  # its session survived
    health = httpx.get(worker.url + "/health", timeout=10).json()
    assert health["sessions"] <= 2 * 3 and health["max_key_sets_per_client"] == 3  # two clients, 3 sessions each at most
    log = worker.text()
    assert "client=attacker" in log and TOKENS["attacker"] not in log and TOKENS["honest"] not in log
