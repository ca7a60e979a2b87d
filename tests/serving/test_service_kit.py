"""The serving kit shared by ``veilml serve`` and ``veilml worker`` (issue 21, findings 3, 4 and 9), in process.

The fair scheduler, the owned key/session store, per-client tokens and limits, and Dask's chunking;
the same rules are exercised against real services in ``test_serve_attacks.py`` and
``test_worker_service.py``.
"""

from __future__ import annotations

import asyncio
import stat
import time

import numpy as np
import pytest

from veilml.serving.app import AccessTokens
from veilml.serving.limits import ServiceError, ServiceLimits
from veilml.serving.scheduler import FairScheduler, RunTimeout
from veilml.serving.store import MAX_GRANTS, OwnedStore

KEY_ID = r"[0-9a-f]{64}"


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:064x}" for i in range(start, start + n)]


def _store(tmp_path=None, **limits) -> OwnedStore:
    defaults = {"max_key_bytes": 1000, "max_key_sets": 8, "max_key_bytes_per_client": 400, "max_key_sets_per_client": 3}
    return OwnedStore(
        ServiceLimits(**{**defaults, **limits}),
        id_pattern=KEY_ID,
        noun="key id",
        unknown_code="unknown-key",
        directory=None if tmp_path is None else tmp_path / "keys",
    )


# -- finding 3: one client's large batch no longer holds every other client back ---------------------------


def test_the_scheduler_takes_clients_in_turn_and_bounds_admission() -> None:
    """A 40-unit request does not delay a 1-unit request of another client by 40 units (it did: FIFO)."""
    scheduler = FairScheduler(workers=1, max_queue=3, max_per_client=2)
    done: list[str] = []

    def unit(name: str):
        def run() -> str:
            time.sleep(0.02)
            done.append(name)
            return name

        return run

    async def scenario() -> None:
        big = asyncio.create_task(scheduler.run("attacker", [unit("big")] * 40, timeout=30))
        await asyncio.sleep(0.1)  # the big request is being worked on
        assert await scheduler.run("honest", [unit("small")], timeout=30) == ["small"]
        assert done.count("big") < 12  # answered after a few of the attacker's units, not all 40
        second = asyncio.create_task(scheduler.run("attacker", [unit("big")] * 5, timeout=30))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as error:  # the attacker's own share is used
            await scheduler.run("attacker", [unit("big")], timeout=30)
        assert (error.value.status, error.value.code) == (429, "busy-client")
        third = asyncio.create_task(scheduler.run("someone", [unit("x")] * 5, timeout=30))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as error:  # the whole queue is used
            await scheduler.run("another", [unit("x")], timeout=30)
        assert (error.value.status, error.value.code) == (503, "busy")
        assert len(await big) == 40 and len(await second) == 5 and len(await third) == 5

    asyncio.run(scenario())
    scheduler.close()


def test_a_request_past_its_run_timeout_is_stopped_and_the_next_is_served() -> None:
    scheduler = FairScheduler(workers=1, max_queue=8, max_per_client=8)
    ran = []

    def slow() -> None:
        ran.append(1)
        time.sleep(0.1)

    async def scenario() -> None:
        start = time.monotonic()
        with pytest.raises(RunTimeout) as error:
            await scheduler.run("client", [slow] * 50, timeout=0.5)
        assert error.value.status == 504 and "--run-timeout" in str(error.value)
        assert time.monotonic() - start < 2
        await asyncio.sleep(0.3)
        assert len(ran) <= 8  # the units left were dropped, not run
        assert await scheduler.run("client", [lambda: 7], timeout=5) == [7]

    asyncio.run(scenario())
    assert scheduler.admitted == 0
    scheduler.close()


def test_a_failing_unit_fails_its_request_only() -> None:
    scheduler = FairScheduler(workers=2, max_queue=8, max_per_client=8)

    def broken() -> None:
        raise ValueError("bad ciphertext")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="bad ciphertext"):
            await scheduler.run("a", [lambda: 1, broken, lambda: 3], timeout=5)
        assert await scheduler.run("a", [lambda: 1, lambda: 2], timeout=5) == [1, 2]

    asyncio.run(scenario())
    scheduler.close()


# -- finding 4: the key store cannot be filled, and owners cannot be locked out -----------------------------


def test_a_flood_of_key_sets_evicts_the_flooders_own(tmp_path) -> None:
    store = _store(tmp_path)
    victim_id, victim_secret = store.open("victim", _ids(1)[0])
    store.put(victim_id, "keys", b"v" * 300)
    for key_id in _ids(50, start=100):  # forged key sets: all valid-looking, all the attacker's
        store.open("attacker", key_id)
        store.put(key_id, "keys", b"a" * 300)
    assert store.usage("attacker") == (1, 300)  # 400 bytes per client: one of its 300-byte sets at a time
    assert store.usage("victim") == (1, 300) and store.get(victim_id, "keys") == b"v" * 300
    store.authorize(victim_id, victim_secret)
    assert store.used_bytes() <= 1000 and len(store) <= 8
    files = list((tmp_path / "keys").iterdir())
    assert len(files) == 4 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)  # two entries, 0600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    with pytest.raises(ServiceError) as error:  # one key set over the per-client bound: a clear 413 naming the flag
        store.put(victim_id, "keys", b"v" * 401)
    assert error.value.status == 413 and "--max-key-mb-per-client" in str(error.value)


def test_over_the_global_bound_the_heaviest_clients_keys_go_first(tmp_path) -> None:
    store = _store(tmp_path, max_key_bytes=1000, max_key_bytes_per_client=1000, max_key_sets_per_client=10)
    for key_id, client, size in zip(_ids(5), ["light", "heavy", "heavy", "heavy", "light"], [100, 300, 300, 200, 100]):
        store.open(client, key_id)
        store.put(key_id, "keys", b"k" * size)
    assert store.used_bytes() == 1000
    store.open("light", _ids(1, start=9)[0])
    store.put(_ids(1, start=9)[0], "keys", b"k" * 100)  # over: the heavy client's least recent set goes
    assert store.usage("light") == (3, 300) and store.usage("heavy") == (2, 500)
    assert _ids(1)[0] in store and _ids(2)[1] not in store


def test_re_registering_someone_elses_keys_never_drops_the_owners_secret() -> None:
    store = _store()
    key_id, owner_secret = store.open("owner", _ids(1)[0])
    store.put(key_id, "keys", b"public keys")
    for _ in range(3 * MAX_GRANTS):
        _, other = store.open("attacker", key_id)
    store.authorize(key_id, owner_secret)  # still works (it was evicted after 16 re-posts before)
    store.authorize(key_id, other)  # the latest re-poster has a grant of its own
    assert store.usage("attacker") == (0, 0)  # re-posting stores nothing new and owns nothing
    with pytest.raises(ServiceError) as error:
        store.authorize(key_id, "a guess")
    assert (error.value.status, error.value.code) == (403, "forbidden")
    with pytest.raises(ServiceError) as error:
        store.authorize(key_id, None)
    assert (error.value.status, error.value.code) == (401, "no-secret")


def test_a_corrupted_entry_reads_as_unknown_and_is_written_anew(tmp_path) -> None:
    store = _store(tmp_path)
    key_id, secret = store.open("client", _ids(1)[0])
    store.put(key_id, "keys", b"k" * 100)
    path = tmp_path / "keys" / f"{key_id}.keys"
    path.write_bytes(b"x" * 100)  # a disk error, or someone with access to the state directory
    with pytest.raises(ServiceError) as error:
        store.get(key_id, "keys")
    assert (error.value.status, error.value.code) == (401, "unknown-key")  # not a 500: the client registers again
    assert key_id not in store and not path.exists()
    store.open("client", key_id)
    store.put(key_id, "keys", b"k" * 100)
    assert store.get(key_id, "keys") == b"k" * 100
    # a garbled index file is dropped when the service starts, not a crash
    (tmp_path / "keys" / f"{key_id}.json").write_text("{not json")
    assert key_id not in _store(tmp_path)
    restarted = _store(tmp_path)
    assert len(restarted) == 0 and not any((tmp_path / "keys").iterdir())


def test_the_store_survives_a_restart(tmp_path) -> None:
    store = _store(tmp_path)
    key_id, secret = store.open("client", _ids(1)[0])
    store.put(key_id, "keys", b"k" * 10)
    again = _store(tmp_path)
    again.authorize(key_id, secret)
    assert again.get(key_id, "keys") == b"k" * 10 and again.usage("client") == (1, 10)


# -- tokens, limits, flags ---------------------------------------------------------------------------------


def test_access_tokens_name_their_clients() -> None:
    tokens = AccessTokens.parse("# clients\nalice " + "a" * 20 + "\n\n" + "b" * 24 + "\n")
    assert tokens.identify("a" * 20) == "alice" and tokens.identify("b" * 24) == "token-4"
    assert tokens.identify("c" * 20) is None
    with pytest.raises(ValueError, match="at least 16 characters"):
        AccessTokens.parse("short")
    with pytest.raises(ValueError, match="repeats a token"):
        AccessTokens.parse("x " + "a" * 20 + "\ny " + "a" * 20)


def test_every_limit_is_a_flag_of_both_commands() -> None:
    import dataclasses

    from veilml.cli import build_parser

    parser = build_parser()
    serve = parser.parse_args(["serve", "bundle", "--max-key-store-mb", "10", "--max-rows", "7", "--workers", "2"])
    worker = parser.parse_args(["worker", "--weights", "w", "--max-sessions", "5", "--upload-timeout", "9"])
    from veilml.serving.limits import limits_from_args

    served, working = limits_from_args(serve), limits_from_args(worker)
    assert (served.max_key_bytes, served.max_rows, served.workers) == (10 * 2**20, 7, 2)
    assert (working.max_key_sets, working.upload_timeout) == (5, 9.0)
    fields = {f.name for f in dataclasses.fields(ServiceLimits)}
    assert set(vars(serve)) >= fields and set(vars(worker)) >= fields
    with pytest.raises(ValueError, match="raise --max-inflight-mb"):
        ServiceLimits(max_payload_bytes=10, max_inflight_bytes=5)


def test_run_on_dask_keeps_chunks_within_a_servers_rows() -> None:
    """Finding 9: the default chunks (the rows spread over the workers) could exceed ModelServer's 256 rows."""
    from veilml.runtime.envelope import pack_batch, pack_envelope, unpack_batch
    from veilml.serving.bundle import DEFAULT_MAX_ROWS
    from veilml.serving.dask import run_on_dask

    sent = []

    class FakeDask:
        def nthreads(self):
            return {"only": 1}

        def scatter(self, data, broadcast):
            return data

        def submit(self, function, path, keys, key_id, chunk, pure):
            sent.append(len(unpack_batch(chunk, max_items=10_000)))
            return chunk

        def gather(self, futures):
            return futures

    keys = pack_envelope("evaluation-keys", b"k", fingerprint="0" * 64, key_id="1" * 64)
    batch = pack_batch([b"row"] * 600)
    assert len(unpack_batch(run_on_dask(FakeDask(), ".", keys, batch), max_items=10_000)) == 600
    assert sent == [DEFAULT_MAX_ROWS, DEFAULT_MAX_ROWS, 600 - 2 * DEFAULT_MAX_ROWS]
    with pytest.raises(ValueError, match="chunk_rows must be from 1 to 256"):
        run_on_dask(FakeDask(), ".", keys, batch, chunk_rows=300)


def test_worker_sessions_have_per_client_quotas() -> None:
    """Finding 4 on the worker: one client opening sessions in a loop evicts its own, never another's."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from veilml.linear import Worker
    from veilml.linear.service import create_app

    worker = Worker({"fc": np.ones((4, 2))}, backend="clear")
    tokens = AccessTokens.parse(f"victim {'v' * 20}\nattacker {'a' * 20}")
    client = TestClient(create_app(worker, access_token=tokens, max_key_sets=20, max_key_sets_per_client=4))
    victim = client.post("/sessions", headers={"authorization": "Bearer " + "v" * 20}).json()
    for _ in range(50):
        assert client.post("/sessions", headers={"authorization": "Bearer " + "a" * 20}).status_code == 201
    assert worker.store.usage("attacker")[0] == 4 and victim["session"] in worker.sessions
    health = client.get("/health").json()
    assert (health["max_key_sets"], health["max_key_sets_per_client"], health["sessions"]) == (20, 4, 5)
