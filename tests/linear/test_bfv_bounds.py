"""The bfv worker's work is bounded by construction: it derives the plan and the parameters, cuts the work into
units with a deadline, keeps its weight cache within budget, and refuses oversized or hostile messages.

Both engines (``bfv`` and ``bfv-seal``) share the worker's checks (:mod:`veilml.linear.bfv.server`): each test
runs on both."""

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from requires import require

require("tenseal.sealapi", "bfv")
require("zstandard", "bfv")

from veilml.linear import pack_frames, unpack_frames  # noqa: E402
from veilml.linear.base import Work, WorkTimeout, run_work  # noqa: E402
from veilml.linear.bfv import BFVBackend, Plan  # noqa: E402
from veilml.linear.bfv import params as rns  # noqa: E402
from veilml.linear.bfv.encoding import pack_bits, unpack_bits  # noqa: E402
from veilml.linear.bfv.planner import result_shift  # noqa: E402
from veilml.linear.bfv.product import pack_values, unpack_values  # noqa: E402
from veilml.linear.bfv.seal import SealBFVBackend  # noqa: E402
from veilml.linear.bfv.seal import params as seal  # noqa: E402
from veilml.linear.bfv.wire import BFVSetup, read_message  # noqa: E402
from veilml.linear.clear import ClearBackend  # noqa: E402

rng = np.random.default_rng(7)
ENGINES = {"bfv": (BFVBackend, rns), "bfv-seal": (SealBFVBackend, seal)}


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """(backend class, its parameters module)."""
    return ENGINES[request.param]


def client(backend, M, input_bits=8):
    server, session = backend.server(M, input_bits), backend.session()
    keys = session.register("m", server.spec, server.setup())
    return server, session, keys


def test_a_hostile_plan_is_refused_before_any_heavy_work(engine):
    """(1, 2048, 1) with its matching shift: 8 rows asked for a (8 x C) array of whole ciphertexts (the attack)."""
    backend, module = engine
    M = rng.integers(-127, 128, size=(64, 192))
    server, session, keys = client(backend(), M)
    params = module.BFVParams.from_bytes(keys)
    hostile = Plan(1, 2048, 1, result_shift(params, 1, 2048, 1, server.w_max))
    session._plan = lambda matrix, n: hostile  # a client that proposes its own plan
    ciphertext = session.encrypt("m", rng.integers(0, 256, size=(8, 64)))
    assert json.loads(unpack_frames(ciphertext)[0])["plan"] == [1, 2048, 1, hostile.shift]
    start = time.process_time()
    for call in (server.work, server.run):
        with pytest.raises(ValueError, match=r"not this worker's plan for 8 rows.*use veilml's client"):
            call(ciphertext, keys)
    assert time.process_time() - start < 0.5
    assert server.weight_cache.encoded == 0 and server.weight_cache.held == 0  # no weight was even encoded


def test_only_the_parameters_an_honest_client_derives_are_accepted(engine):
    backend, module = engine
    M = rng.integers(-127, 128, size=(64, 192))
    server, _, keys = client(backend(), M)
    server.check_keys(keys)
    honest = module.BFVParams.from_bytes(keys)
    for bigger in (1, 8):  # valid for the engine and for the noise, but not what the client derives: refused
        other = dataclasses.replace(honest, plain_bits=honest.plain_bits + bigger).to_bytes()
        with pytest.raises(ValueError, match="not this worker's for this matrix.*use veilml's client"):
            server.check_keys(other)
    with pytest.raises(ValueError, match="at most 512 bytes"):
        server.check_keys(keys + b" " * 1000)


def test_work_units_in_any_order_give_the_bytes_of_run_and_the_exact_product(engine):
    backend, _ = engine
    # the RNS engine's units are tiles of 8 MiB of float64 weights (256 columns of 4096 rows) and the session's
    # hint: four here; the SEAL engine's are row blocks (of 64 rows here)
    (n, d, m) = (40, 4096, 600) if backend is BFVBackend else (150, 64, 192)
    M = rng.integers(-128, 128, size=(d, m))
    server, session, keys = client(backend(), M)
    x = rng.integers(0, 256, size=(n, d))
    ciphertext = session.encrypt("m", x)
    expected = server.run(ciphertext, keys)
    work = server.work(ciphertext, keys)
    assert isinstance(work, Work) and len(work.units) >= 3
    with pytest.raises(RuntimeError, match="before every unit"):
        work.finish()
    for index in rng.permutation(len(work.units)):
        work.units[index]()
    assert work.finish() == expected
    with pytest.raises(RuntimeError, match="finished already"):
        work.finish()
    threaded = server.work(ciphertext, keys)  # units run at once from several threads
    threads = [threading.Thread(target=unit) for unit in threaded.units]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert threaded.finish() == expected
    assert np.array_equal(session.decrypt("m", expected), x.astype(np.int64) @ M.astype(np.int64))


def test_a_past_deadline_stops_the_work(engine):
    backend, _ = engine
    M = rng.integers(-127, 128, size=(64, 192))
    server, session, keys = client(backend(), M)
    ciphertext = session.encrypt("m", rng.integers(0, 256, size=(70, 64)))
    with pytest.raises(WorkTimeout, match="units of work"):
        server.run(ciphertext, keys, deadline=time.monotonic() - 1)
    assert issubclass(WorkTimeout, RuntimeError)
    with pytest.raises(WorkTimeout):
        run_work(server.work(ciphertext, keys), deadline=time.monotonic() - 1)
    slow = backend(run_timeout=1e-9).server(M, 8)  # the backend's time limit applies without a deadline
    with pytest.raises(WorkTimeout):
        slow.run(ciphertext, keys)


def test_the_rns_worker_keeps_no_encoded_weights():
    """The default engine's products read the clear matrix: nothing is encoded or kept, whatever the row counts."""
    M = rng.integers(-127, 128, size=(64, 192))
    server, session, keys = client(BFVBackend(), M)
    assert server.cached_rows == 0 and BFVSetup.from_bytes(server.setup(), rns.SETUP_FORMAT).cached_rows == 0
    for n in (1, 8, 40, 100):
        x = rng.integers(0, 256, size=(n, 64))
        assert np.array_equal(session.decrypt("m", server.run(session.encrypt("m", x), keys)), x @ M)
    assert server.weight_cache.held == 0 and server.weight_cache.encoded == 0


def test_the_weight_cache_stays_within_budget_under_alternating_row_counts():
    factory, module = SealBFVBackend, seal
    M = rng.integers(-127, 128, size=(64, 192))
    size = factory().server(M, 8).cache_size
    backend = factory(weight_cache_bytes=size(8) + size(1))  # 8 rows per block fit, 16 do not
    server, session, keys = client(backend, M)
    cache = server.weight_cache
    assert server.cached_rows == 8 and cache.limit == size(8) and backend._budget.used <= backend._budget.limit
    requests = {n: session.encrypt("m", rng.integers(0, 256, size=(n, 64))) for n in (1, 2, 5, 8, 40)}
    for ciphertext in requests.values():  # every cached shape once
        server.run(ciphertext, keys)
        assert cache.held <= cache.limit
    encoded, held = cache.encoded, cache.held
    for _ in range(3):  # two clients alternating row counts: nothing is encoded again, nothing more is held
        for n in (1, 8, 2, 8, 5, 40):
            server.run(requests[n], keys)
            assert cache.held == held <= cache.limit and cache.encoded == encoded
    blocks = [shape[0] for shape in cache.shapes]
    assert set(blocks) <= {1, 2, 4, 8} and len(set(blocks)) == len(blocks) >= 2  # at most one shape per n_t
    fresh, session, keys = client(factory(), M)  # concurrent first requests encode each column block once
    ciphertext = session.encrypt("m", rng.integers(0, 256, size=(64, 64)))
    threads = [threading.Thread(target=fresh.run, args=(ciphertext, keys)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    plan = fresh.plan(module.BFVParams.from_bytes(keys), 64)
    assert fresh.weight_cache.encoded == plan.counts(64, 64, 192)[2]


def test_a_result_over_the_limit_is_refused_unrun(engine):
    backend, _ = engine
    M = rng.integers(-127, 128, size=(64, 192))
    server, session, keys = client(backend(max_result_bytes=10_000), M)
    with pytest.raises(ValueError, match="over this worker's limit of 10000; send fewer rows"):
        server.work(session.encrypt("m", rng.integers(0, 256, size=(4, 64))), keys)


def test_deeply_nested_json_is_a_value_error(engine):
    _, module = engine
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="header of at most"):
        read_message(pack_frames([deep, b""]), module.CIPHERTEXT_FORMAT)
    for text in (deep, b'{"format": ' + deep + b"}"):
        with pytest.raises(ValueError):
            module.BFVParams.from_bytes(text)
        with pytest.raises(ValueError):
            BFVSetup.from_bytes(text, module.SETUP_FORMAT)
    nested = b"[" * 400 + b"]" * 400  # short enough to parse: still a ValueError, not a crash
    with pytest.raises(ValueError):
        read_message(pack_frames([nested]), module.CIPHERTEXT_FORMAT)


def test_the_default_work_is_one_unit_around_run():
    M = rng.integers(-8, 8, size=(6, 4))
    server = ClearBackend().server(M, 8)
    session = ClearBackend().session()
    keys = session.register("m", server.spec, server.setup())
    x = rng.integers(0, 256, size=(3, 6))
    work = server.work(session.encrypt("m", x), keys)
    assert len(work.units) == 1
    assert np.array_equal(session.decrypt("m", run_work(work)), x @ M)


def test_bit_packing_keeps_its_wire_layout():
    """The vectorized packer against the layout itself: value i at bits i*bits.. of one little-endian integer."""
    for bits in (1, 7, 26, 38, 54, 63, 64):
        for count in (0, 1, 33, 200):
            values = rng.integers(0, 2 ** min(bits, 63), size=count, dtype=np.uint64)
            if count and bits == 64:
                values[-1] = np.uint64(2**64 - 1)
            stream = sum(int(v) << (i * bits) for i, v in enumerate(values))
            expected = stream.to_bytes(-(-count * bits // 8), "little")
            assert pack_bits(values, bits) == expected and np.array_equal(unpack_bits(expected, count, bits), values)
            if bits <= 55:  # the RNS engine's numba packer writes the same layout
                assert pack_values(values.astype(np.int64), bits) == expected
                assert np.array_equal(unpack_values(expected, count, bits), values.astype(np.int64))
