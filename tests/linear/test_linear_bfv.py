"""The exact 'bfv' encrypted-linear backends: the default RNS engine and 'bfv-seal' (SEAL's BFV through tenseal).

Products, plans, budgets and the worker are checked on both engines; SEAL's byte layouts on the SEAL one.
"""

import json

import numpy as np
import pytest
from requires import require

sealapi = require("tenseal.sealapi", "bfv")
require("zstandard", "bfv")

from worker_helpers import held_bytes  # noqa: E402

from veilml.linear import (  # noqa: E402
    EncryptedLinearExecutor,
    LocalTransport,
    Worker,
    WorkerError,
    get_backend,
    pack_frames,
    unpack_frames,
)
from veilml.linear.bfv import BFVBackend, plan_product  # noqa: E402
from veilml.linear.bfv.backend import BFVServer  # noqa: E402
from veilml.linear.bfv.encoding import pack_bits, switch_modulus, unpack_bits  # noqa: E402
from veilml.linear.bfv.params import RNS_COSTS  # noqa: E402
from veilml.linear.bfv.params import client_params as rns_params  # noqa: E402
from veilml.linear.bfv.planner import plain_bits_for  # noqa: E402
from veilml.linear.bfv.seal import SealBFVBackend  # noqa: E402
from veilml.linear.bfv.seal.crypto import ClientKey  # noqa: E402
from veilml.linear.bfv.seal.params import SEAL_COSTS, client_params  # noqa: E402
from veilml.linear.clear import ClearBackend  # noqa: E402
from veilml.runtime.seal_bytes import (  # noqa: E402
    ciphertext_bytes,
    plaintext_bytes,
    read_ciphertext,
    read_seeded_ciphertext,
    seal_files,
    unwrap,
)

rng = np.random.default_rng(0)


ENGINES = {"bfv": BFVBackend, "bfv-seal": SealBFVBackend}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def backend(request):
    return ENGINES[request.param]()


def product(backend, M, x, input_bits=8):
    server, session = backend.server(M, input_bits), backend.session()
    keys = session.register("m", server.spec, server.setup())
    ciphertext = session.encrypt("m", x)
    result = server.run(ciphertext, keys)
    return session.decrypt("m", result), (server, session, keys, ciphertext, result)


def clear_product(M, x, input_bits=8):
    server = ClearBackend().server(M, input_bits)
    return server.product(server.spec.check_input(x))


def decrypted(key, ciphertext) -> list[int]:
    plain = sealapi.Plaintext()
    key._decryptor.decrypt(ciphertext, plain)
    return [plain.data(i) for i in range(plain.coeff_count())] + [0] * (2048 - plain.coeff_count())


# -- SEAL's byte layouts, checked against SEAL's own encryption and decryption ------------------------------


def test_hand_written_layouts_round_trip_through_seal():
    key = ClientKey(client_params(64, 8, 127))
    seal, files, t = key.seal, seal_files(), key.params.plain_modulus
    coeffs = rng.integers(0, t, size=2048).astype(np.uint64)
    plain = seal.plaintext(coeffs)  # our plaintext layout, loaded by SEAL (which checks every coefficient < t)
    assert [plain.data(i) for i in (0, 1, 2047)] == [int(coeffs[0]), int(coeffs[1]), int(coeffs[2047])]
    first, seed = key.encrypt(coeffs)  # SEAL's seeded symmetric encryption, parsed by hand
    assert first.shape == (2048,) and len(seed) == 65 and seed[0] in (1, 2)
    loaded = seal.load_seeded(first, seed)  # rebuilt by hand; SEAL expands the second polynomial from the seed
    assert decrypted(key, loaded) == coeffs.tolist()
    polys = read_ciphertext(files.save(loaded), 2048)  # the full ciphertext as SEAL saves it (zstd), parsed by hand
    assert np.array_equal(polys[0], first) and (polys < key.params.coeff_modulus).all()
    rebuilt = files.load(sealapi.Ciphertext(), seal.context, ciphertext_bytes(seal.parms_id, polys))
    assert decrypted(key, rebuilt) == coeffs.tolist()
    # the secret key's coefficients read by the crafted decryption give SEAL's own decryption in numpy
    q = key.params.coeff_modulus
    phase = (polys[0].astype(object) + _negacyclic(polys[1], key._secret)) % q
    assert [(int(v) * t + q // 2) // q % t for v in phase] == coeffs.tolist()
    with pytest.raises(ValueError, match="not a SEAL object"):
        unwrap(b"\x00" * 32, 1 << 20)
    with pytest.raises(ValueError, match="array size"):  # a full ciphertext is not a seeded one
        read_seeded_ciphertext(files.save(loaded), 2048)
    with pytest.raises(Exception, match="invalid|valid"):  # SEAL itself refuses a coefficient >= t
        files.load(sealapi.Plaintext(), seal.context, plaintext_bytes(np.full(2048, t, np.uint64)))


def _negacyclic(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """a * s in Z[X] / (X^N + 1), exactly (Python integers)."""
    a, out = a.astype(object), np.zeros(len(a), dtype=object)
    for i in np.flatnonzero(s):  # X^i a: shifted up by i, the i wrapped coefficients negated
        out += int(s[i]) * np.concatenate([-a[len(a) - i :], a[: len(a) - i]])
    return out


def test_bit_packing_and_modulus_switch_are_exact():
    for bits in (1, 7, 36, 54, 60):
        values = rng.integers(0, 2**bits, size=1000, dtype=np.uint64)
        data = pack_bits(values, bits)
        assert len(data) == -(-1000 * bits // 8) and np.array_equal(unpack_bits(data, 1000, bits), values)
        with pytest.raises(ValueError, match="bytes"):
            unpack_bits(data + b"\x00", 1000, bits)
    q = client_params(2048, 8, 128).coeff_modulus
    values = np.concatenate([rng.integers(0, q, 5000, dtype=np.uint64), np.array([0, 1, q // 2, q - 1], np.uint64)])
    for bits in (20, 39, 48):
        exact = [((int(v) << (bits + 1)) + q) // (2 * q) % 2**bits for v in values]
        assert switch_modulus(values, q, bits).tolist() == exact


# -- exact products --------------------------------------------------------------------------------------------


# forward (d, m) and backward (m, d) of every projection of the tiny models: GPT-2 32 and 64 wide, Llama 64 wide
TINY_SHAPES = [(32, 96), (96, 32), (32, 32), (32, 128), (128, 32), (64, 192), (192, 64), (64, 64), (64, 256), (256, 64)]
TINY_SHAPES += [(64, 128), (128, 64)]


@pytest.mark.parametrize("d, m", TINY_SHAPES)
def test_equals_clear_on_every_layer_shape_of_the_tiny_models(backend, d, m):
    """Every layer shape of the tiny models, 16 and 512 rows (one and eight row blocks of 64)."""
    M = rng.integers(-127, 128, size=(d, m))
    for n in (16, 512):
        x = rng.integers(0, 256, size=(n, d))
        result, _ = product(backend, M, x)
        assert result.dtype == np.int64 and np.array_equal(result, clear_product(M, x))


@pytest.mark.parametrize("n, d, m", [(1, 7, 3), (5, 100, 50), (3, 1, 1), (70, 33, 65)])
def test_equals_clear_on_ragged_shapes(backend, n, d, m):
    M = rng.integers(-127, 128, size=(d, m))
    x = rng.integers(0, 256, size=(n, d))
    assert np.array_equal(product(backend, M, x)[0], x @ M)


def test_one_row_through_a_2048_by_2048_matrix(backend):
    M = rng.integers(-127, 128, size=(2048, 2048))
    x = rng.integers(0, 256, size=(1, 2048))
    result, (server, session, keys, ciphertext, answer) = product(backend, M, x)
    assert np.array_equal(result, x @ M)
    if isinstance(server, BFVServer):  # the first answer of a shape carries the session's hint: 2048 x 2048 coefficients
        assert len(answer) > 2048 * 2048 * 4
        ciphertext = session.encrypt("m", x)
        answer = server.run(ciphertext, keys)
        assert np.array_equal(session.decrypt("m", answer), x @ M)
        assert len(ciphertext) < 15_000 and len(answer) < 12_000  # one ciphertext up, 2048 outputs down
    else:
        assert len(ciphertext) < 600_000 and len(answer) < 800_000  # ~0.44 MB up, ~0.65 MB down


@pytest.mark.parametrize("n, d, m", [(1, 2048, 2048), (2, 32896, 4), (64, 2048, 4)])
def test_extreme_values_at_the_widest_layers(backend, n, d, m):
    """All-max activations against all-min and all-max weights, and alternating signs: the largest |x @ W|,
    up to the widest inner dimension the noise allows (32,896 at 8 bits)."""
    for weight in (-128, 127):
        M = np.full((d, m), weight)
        M[:, -1] = np.where(np.arange(d) % 2, -128, 127)
        for x in (np.full((n, d), 255), np.zeros((n, d), np.int64)):
            assert np.array_equal(product(backend, M, x)[0], x @ M)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_noise_bound_and_plan_fit_the_modulus(engine):
    derive, costs = (rns_params, RNS_COSTS) if engine == "bfv" else (client_params, SEAL_COSTS)
    for d in (64, 2048, 16384):
        params = derive(d, 8, 128)
        assert (2 * d * 255 * 128) < params.plain_modulus <= 4 * d * 255 * 128
        for n in (1, 64, 512):
            plan = plan_product(params, costs, n, d, 2048, 128, 0)
            assert plan.n_t * plan.n_d * plan.n_m == 2048 and 1 <= plan.shift <= 20
    assert plain_bits_for(2048, 8, 128) == 27
    if engine == "bfv-seal":
        assert plan_product(derive(64, 8, 127), costs, 512, 64, 192, 127, 64).n_t == 64  # the probe's shapes
    with pytest.raises(ValueError, match="no block shape"):
        plan_product(derive(2**20, 8, 128), costs, 1, 2**20, 4, 128, 0)
    server = ENGINES[engine]().server(np.full((32897, 2), -128), 8)  # one row wider than the noise allows
    with pytest.raises(ValueError, match="no block shape"):
        ENGINES[engine]().session().register("m", server.spec, server.setup())


# -- the worker, the client, and what each holds ------------------------------------------------------------------


def test_registry_default_and_float_products_through_the_worker():
    assert isinstance(get_backend("bfv"), BFVBackend) and BFVBackend.exact and BFVBackend.encrypts
    assert isinstance(get_backend("bfv-seal"), SealBFVBackend) and SealBFVBackend.exact and SealBFVBackend.encrypts
    assert Worker({"a": rng.normal(size=(4, 2))}).backend == "bfv"  # the default encrypting backend
    W, bias = rng.normal(size=(48, 20)), rng.normal(size=20)
    x, g = rng.normal(size=(9, 48)), rng.normal(size=(9, 20))
    results = {}
    for name in ("clear", "bfv", "bfv-seal"):
        worker = Worker({"fc": W}, biases={"fc": bias}, backend=name)
        executor = EncryptedLinearExecutor(LocalTransport(worker), backend=None if name == "bfv" else name)
        results[name] = executor.forward("fc", x), executor.backward("fc", g)
    for engine in ("bfv", "bfv-seal"):
        for exact, reference in zip(results[engine], results["clear"]):
            np.testing.assert_array_equal(exact, reference)  # bit for bit, forward and backward


def _pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 1024] for i in range(0, len(data), 4096)]


def _secret_pieces(key) -> list[bytes]:
    """Pieces of a SEAL client key's secret as the client holds it: its coefficients, SEAL's NTT-form key."""
    pieces = _pieces(key._secret.astype(np.int64).tobytes())
    sealed = unwrap(seal_files().save(key._secret_key), 1 << 20)
    return pieces + [sealed[-1024 * i - 1024 : -1024 * i or None] for i in range(4)]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_the_worker_never_holds_a_secret_key(engine, monkeypatch):
    made: list[bytes] = []  # the RNS engine's secrets (one per row block and request), as the client makes them
    if engine == "bfv":
        from veilml.linear.bfv.keys import ClientKey as RNSKey

        def recording(key, count, make=RNSKey.secrets):
            secrets, s_hat, s_shoup = make(key, count)
            made.extend(_pieces(secrets.tobytes()) + _pieces(np.ascontiguousarray(s_hat.transpose(2, 0, 1)).tobytes()))
            return secrets, s_hat, s_shoup

        monkeypatch.setattr(RNSKey, "secrets", recording)
    worker = Worker({"fc": rng.normal(size=(40, 24)), "out": rng.normal(size=(24, 40))}, backend=engine)
    executor = EncryptedLinearExecutor(LocalTransport(worker), backend=engine)
    for name, width in (("fc", 40), ("out", 24)):
        executor.forward(name, rng.normal(size=(3, width)))
        executor.backward(name, rng.normal(size=(3, 64 - width)))
    keys = list(executor.session._keys.values())
    assert keys
    if engine == "bfv":
        assert len(made) > 8 and not executor.session._pending  # decrypted requests' secrets are dropped
        assert not any(any(w in blob for w in made) for blob in held_bytes(executor.session))
        executor.session.encrypt("fc/forward", rng.integers(0, 256, size=(3, 40)))  # one awaiting its result
    secrets = made if engine == "bfv" else [piece for key in keys for piece in _secret_pieces(key)]
    assert any(any(w in blob for w in secrets) for blob in held_bytes(executor.session))  # the probe finds them
    assert not any(any(w in blob for w in secrets) for blob in held_bytes(worker))
    for scope, message in worker.session_keys.items():  # all a worker holds of a session: public parameters
        params = get_backend(engine).server(np.eye(2, dtype=np.int64), 8).parse_params(message)
        assert len(message) < 200 and params.plain_bits >= 20, scope


def test_bad_keys_and_messages_are_refused_before_seal_sees_them():
    M = rng.integers(-127, 128, size=(40, 12))
    _, (server, session, keys, ciphertext, result) = product(SealBFVBackend(), M, rng.integers(0, 256, size=(5, 40)))
    params = json.loads(keys)
    for junk, words in [
        (b"junk", "veilml-bfv-params"),
        (json.dumps({**params, "poly_degree": 1024}).encode(), "polynomial degree 2048"),
        (json.dumps({**params, "coeff_modulus": 2**53 + 1}).encode(), "prime"),
        (json.dumps({**params, "plain_bits": 8}).encode(), "too small"),
        (json.dumps({**params, "plain_bits": 4.5}).encode(), "integer"),
    ]:
        with pytest.raises(ValueError, match=words):
            server.check_keys(junk)
    with pytest.raises(ValueError, match="not this worker's"):  # 1 mod 4096, 53 bits, but not SEAL's prime
        server.check_keys(json.dumps({**params, "coeff_modulus": 2**52 + 4096 * 7 + 1}).encode())
    header, first, seeds = unpack_frames(ciphertext)
    lying = json.loads(header)
    plan = server.plan(server.params(keys), 9)  # the plan of 9 rows, with 5 rows' ciphertexts
    nine = [plan.n_t, plan.n_d, plan.n_m, plan.shift]
    for changed, frames, words in [
        ({"n": 2}, [first, seeds], "not this worker's plan for 2 rows"),  # fewer rows announced than sent
        ({"n": 9, "plan": nine}, [first, seeds], "seeded ciphertexts"),  # more rows announced than sent
        ({"plan": [64, 4, 4, 12]}, [first, seeds], "powers of two whose product"),
        ({"plan": [8, 64, 4, 3]}, [first, seeds], "not this worker's plan"),
        ({}, [first[:-1], seeds], "bytes"),
        ({}, [first, seeds[:-1]], "seeded ciphertexts"),
        ({}, [first, b"\x07" + seeds[1:]], "PRNG type"),
        ({}, [b"\xff" * len(first), seeds], "below the coefficient modulus"),
    ]:
        with pytest.raises(ValueError, match=words):
            server.run(pack_frames([json.dumps({**lying, **changed}).encode(), *frames]), keys)
    rows = server.request_rows(ciphertext)
    assert rows == 5
    with pytest.raises(ValueError, match="block plan"):  # a result relabelled with another row count
        session.decrypt("m", _relabel(result, 70))
    assert session.decrypt("m", server.run(session.encrypt("m", np.zeros((0, 40), np.int64)), keys)).shape == (0, 12)


def _relabel(result: bytes, n: int) -> bytes:
    header, *frames = unpack_frames(result)
    return pack_frames([json.dumps({**json.loads(header), "n": n}).encode(), *frames])


def test_requests_over_max_rows_are_refused():
    worker = Worker({"fc": rng.normal(size=(6, 4))}, backend="bfv", max_rows=2)
    executor = EncryptedLinearExecutor(LocalTransport(worker))
    assert executor.forward("fc", rng.normal(size=(5, 6))).shape == (5, 4)  # the executor sends 2 + 2 + 1 rows
    ciphertext = executor.session.encrypt("fc/forward", np.zeros((5, 6), np.int64))
    with pytest.raises(WorkerError, match="5 rows in one request, over this worker's limit of 2") as error:
        executor.routes["fc"].run(executor.sessions[0], "fc", "forward", ciphertext)
    assert error.value.status == 413


def test_weights_beyond_the_cache_budget_are_encoded_per_request():
    """The SEAL engine's weight cache (the default engine keeps no encoded weights: test_bfv_bounds)."""
    M = rng.integers(-127, 128, size=(64, 96))
    x = rng.integers(0, 256, size=(20, 64))
    backend = ENGINES["bfv-seal"]
    small = backend(weight_cache_bytes=0)
    result, (server, *_) = product(small, M, x)
    assert server.cached_rows == 0 and server.weight_cache.held == 0 and np.array_equal(result, x @ M)
    result, (server, *_) = product(backend(), M, x)
    assert server.cached_rows == 64 and np.array_equal(result, x @ M)
    assert server.weight_cache.held > 0 or server.plan(server.expected_params, 20).n_t > 64  # cached unless planned wider
    size = backend().server(M, 8).cache_size  # bytes kept for a number of cached rows (one shape per n_t up to it)
    assert size(2) > size(1) > 0
    tight = backend(weight_cache_bytes=2 * size(2) + size(1))  # two such matrices fit at 2 rows per block, not 4
    servers = [tight.server(M, 8) for _ in range(2)]
    assert [s.cached_rows for s in servers] == [2, 2]
    greedy = backend(weight_cache_bytes=size(1) * 3 // 2)  # n_t = 1 for one of them only
    servers = [greedy.server(M, 8) for _ in range(2)]
    assert [s.cached_rows for s in servers] == [1, 0]
