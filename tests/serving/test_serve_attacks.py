"""Issue 21 against a real ``veilml serve`` on loopback: one attacker per finding, then an honest client served.

- finding 3: a maximal batch neither holds an honest one-row client back (rows are taken in turn per
  client) nor computes past the run timeout;
- finding 4: forged key sets and re-posts of someone's public keys neither fill the store nor lock
  the owner out; a corrupted stored key set is repaired by registering again (it was a 500);
- finding 9: the service writes an access log, with no token or secret in it.
"""

from __future__ import annotations

import stat
import threading
import time

import httpx
import numpy as np
import pytest
from worker_helpers import CLIWorker

pytestmark = pytest.mark.execute

TOKENS = {"victim": "v" * 24, "attacker": "a" * 24, "other": "o" * 24}


def _auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture(scope="module")
def attacked(compiled_cancer_tree, tmp_path_factory):
    from veilml.runtime.client import write_private_file

    directory = tmp_path_factory.mktemp("serve-attacks")
    bundle = compiled_cancer_tree.save(directory / "bundle")
    tokens = write_private_file(directory / "tokens", "".join(f"{n} {t}\n" for n, t in TOKENS.items()).encode())
    server = CLIWorker(
        directory,
        str(bundle),
        *("--state", str(directory / "state"), "--access-token-file", str(tokens)),
        *("--max-rows", "64", "--run-timeout", "4", "--max-key-sets-per-client", "2", "--max-key-sets", "6"),
        name="serve",
        command="serve",
    )
    server.wait_ready()
    yield server, bundle, directory
    server.kill()


def _remote(server, tmp_path, name="victim"):
    from veilml.serving.remote_model import RemoteModel

    return RemoteModel(
        server.url, key_dir=tmp_path / f"{name}-keys", bundle_dir=tmp_path / f"{name}-client", access_token=TOKENS[name]
    )


def _warm(model, X):
    """The first row loads the bundle and the key set in the child process: retried past a cold start."""
    from veilml.serving.remote_model import RemoteModelError

    for attempt in range(3):
        try:
            return model.predict_integers(X[:1])
        except RemoteModelError as error:
            if error.code != "run-timeout" or attempt == 2:
                raise


def test_a_maximal_batch_neither_delays_an_honest_row_nor_runs_past_the_timeout(
    attacked, compiled_cancer_tree, cancer, tmp_path, no_clip_warning
):
    from veilml.serving.bundle import ModelClient

    server, bundle, _ = attacked
    X = cancer[1]
    honest = _remote(server, tmp_path)
    _warm(honest, X)
    attacker = ModelClient(bundle)
    registered = httpx.post(server.url + "/keys", content=attacker.evaluation_keys(), headers=_auth("attacker"), timeout=60)
    headers = {
        **_auth("attacker"),
        "x-veilml-key-id": registered.json()["key_id"],
        "x-veilml-key-secret": registered.json()["secret"],
    }
    batch = attacker.encrypt(np.resize(X, (64, X.shape[1])))  # the most rows this server takes: about 10 s of work
    outcome = {}

    def attack() -> None:
        outcome["response"] = httpx.post(server.url + "/predict", content=batch, headers=headers, timeout=120)
        outcome["end"] = time.monotonic()

    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.5)  # the batch is being worked on
    start = time.monotonic()
    got = honest.predict_integers(X[3:4])
    honest_end = time.monotonic()
    thread.join()
    np.testing.assert_array_equal(got, compiled_cancer_tree.predict_integers(X[3:4], "simulate"))
    # before: the row waited behind the whole batch; now it is answered after a turn or two
    assert honest_end < outcome["end"], f"the honest row took {honest_end - start:.1f} s and came after the batch"
    response = outcome["response"]
    assert (response.status_code, response.json()["code"]) == (504, "run-timeout"), response.text
    assert outcome["end"] - start < 4 + 3  # stopped at the run timeout, not after the whole batch
    np.testing.assert_array_equal(honest.predict_integers(X[5:7]), compiled_cancer_tree.predict_integers(X[5:7], "simulate"))


def _forged_keys(envelope: bytes, n: int) -> list[bytes]:
    """Key sets a hostile client can make for free: a real one with a coefficient changed, its key id recomputed."""
    from veilml.runtime.envelope import key_id, pack_envelope, unpack_envelope

    real = unpack_envelope(envelope, "evaluation-keys")
    forged = []
    for i in range(n):
        payload = bytearray(real.payload)
        payload[len(payload) // 2 + 8 * i] ^= 0xFF
        forged.append(
            pack_envelope("evaluation-keys", bytes(payload), fingerprint=real.fingerprint, key_id=key_id(bytes(payload)))
        )
    return forged


def test_a_key_store_flood_and_re_posts_lock_nobody_out(attacked, compiled_cancer_tree, cancer, tmp_path, no_clip_warning):
    server, bundle, directory = attacked
    X = cancer[1]
    victim = _remote(server, tmp_path)
    key_id = victim.register()
    uploads: list[str] = []
    victim._http.event_hooks["request"] = [lambda request: uploads.append(request.url.path)]
    public = victim.client.evaluation_keys()
    for forged in _forged_keys(public, 6):  # each passes every check a server can make of public keys
        assert httpx.post(server.url + "/keys", content=forged, headers=_auth("attacker"), timeout=60).status_code == 201
    for _ in range(20):  # re-posts of the victim's own public keys: each gets a secret, none drops the owner's
        assert httpx.post(server.url + "/keys", content=public, headers=_auth("attacker"), timeout=60).status_code == 201
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["key_sets"] <= health["max_key_sets_per_client"] + 2  # the attacker's two, the victim's, the test before's
    stored = list((directory / "state" / "keys").iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)
    assert (directory / "state" / "keys" / f"{key_id}.keys").exists()
    _warm(victim, X)
    np.testing.assert_array_equal(victim.predict_integers(X[:2]), compiled_cancer_tree.predict_integers(X[:2], "simulate"))
    assert set(uploads) == {"/predict"}  # never registered again: its key set and its secret survived

    # a stored key set corrupted on disk: read as unknown, registered again by the client, repaired
    path = directory / "state" / "keys" / f"{key_id}.keys"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    server.kill()
    server._start(server.port)  # the child that had the keys in memory is gone: the file is read again
    server.wait_ready()
    uploads.clear()
    _warm(victim, X)
    np.testing.assert_array_equal(victim.predict_integers(X[:2]), compiled_cancer_tree.predict_integers(X[:2], "simulate"))
    assert uploads.count("/keys") == 1 and uploads[-1] == "/predict"  # registered again once (a cold start may add a 504 retry)
    assert "Traceback" not in server.text() and " 500 " not in server.text()


def test_the_access_log_names_requests_and_no_secret(attacked, tmp_path, cancer, no_clip_warning):
    server, _, _ = attacked
    model = _remote(server, tmp_path, "other")
    _warm(model, cancer[1])
    log = server.text()
    assert "veilml.serve.access: POST /predict 200" in log and "client=other" in log
    assert all(token not in log for token in TOKENS.values()) and model._secret not in log
    assert httpx.get(server.url + "/bundle/client", timeout=10).status_code == 401  # tokens required
