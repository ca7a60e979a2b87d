"""The approximate 'glwe' encrypted-linear backend (concrete-ml-extensions)."""

import json

import numpy as np
import pytest
from requires import require

fhext = require("concrete_ml_extensions", "glwe")

from veilml.linear import (
    EncryptedLinearExecutor,
    LocalTransport,
    MatrixSpec,
    Worker,
    WorkerError,
    get_backend,
    pack_frames,
    unpack_frames,
)
from veilml.linear.glwe import GLWEBackend, GLWESetup, plan_row_blocks

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def backend(key_cache):
    # keygen takes ~10 s; the key cache lets every session of this module reuse one key pair
    return GLWEBackend(insecure_key_cache=key_cache)


@pytest.fixture(scope="module")
def session(backend):
    return backend.session()


def product(backend, session, name, M, x, input_bits=8):
    server = backend.server(M, input_bits)
    keys = session.register(name, server.spec, server.setup())
    return (
        server,
        keys,
        session.decrypt(name, server.run(session.encrypt(name, x), keys)),
    )


def test_registry_and_flags():
    assert isinstance(get_backend("glwe"), GLWEBackend)
    assert GLWEBackend.exact is False and GLWEBackend.name == "glwe"
    assert get_backend("glwe").session().keys_shared_across_matrices


@pytest.mark.parametrize("shape, n", [((24, 16), 3), ((40, 33), 2)])
def test_products_are_within_the_error_bound(backend, session, shape, n):
    M = rng.integers(-127, 128, size=shape)
    x = rng.integers(0, 256, size=(n, shape[0]))
    server, _, result = product(backend, session, f"rand{shape}", M, x)
    bound = backend.error_bound(server.spec, 127)
    assert result.dtype == np.int64 and result.shape == (n, shape[1])
    error = np.abs(result - x @ M)
    assert error.max() <= bound, (error.max(), bound)
    assert 50 < bound < 1000  # the documented ~7 sigma of a ~20-unit noise, not a vacuous bound


def test_keys_are_shared_and_setup_is_public(backend, session):
    a, b = (
        backend.server(rng.integers(-127, 128, size=(8, 4)), 8),
        backend.server(rng.integers(-127, 128, size=(4, 8)), 8),
    )
    ka = session.register("a", a.spec, a.setup())
    kb = session.register("b", b.spec, b.setup())
    assert ka == kb and len(ka) > 1_000_000  # one compression key (~128 MiB) for every matrix
    setup = GLWESetup.from_bytes(a.setup(), 8, 4)
    assert setup.blocks == ((0, 8),) and np.array_equal(setup.col_sums, a.matrix.sum(axis=0))


def test_a_wide_matrix_setup_is_read_and_its_size_bounded(backend):
    """A layer of 2048 output columns (GPT-2-sized MLPs and wider) publishes a setup larger than a fixed JSON cap."""
    wide = backend.server(rng.integers(-127, 128, size=(3000, 2048)), 8)
    data = wide.setup()
    assert len(data) > 4096
    setup = GLWESetup.from_bytes(data, 3000, 2048)
    assert np.array_equal(setup.col_sums, wide.matrix.sum(axis=0)) and setup.blocks[-1][1] == 3000
    with pytest.raises(ValueError, match="bytes"):  # what a (4, 4) matrix's setup may take is far less
        GLWESetup.from_bytes(data, 4, 4)


@pytest.mark.parametrize("rows, blocks", [(2048, 1), (4200, 2)])
def test_no_wrap_for_the_widest_input_and_extreme_column_sums(backend, session, rows, blocks):
    """255 * 127 * 4200 = 136e6 would wrap the extension's 27-bit signed accumulator (±2**26)."""
    M = np.zeros((rows, 3), np.int64)
    M[:, 0], M[:, 1] = 127, -127
    M[::2, 2], M[1::2, 2] = 127, -127
    x = np.stack([np.full(rows, 255), np.zeros(rows, np.int64), np.where(M[:, 2] > 0, 255, 0)])
    server, _, result = product(backend, session, f"extreme{rows}", M, x)
    assert len(server.blocks) == blocks
    exact = x @ M
    assert np.abs(exact).max() == 255 * 127 * rows
    assert np.abs(result - exact).max() <= backend.error_bound(server.spec, 127)


def test_row_block_plan_is_tight_and_refuses_rows_that_overflow_alone():
    M = np.array([[100], [100], [100]])
    assert plan_row_blocks(M, 1, 250) == [(0, 2), (2, 3)]  # 1-bit codes centre to {-1, 0}
    with pytest.raises(ValueError, match="weight of magnitude 300 times 1-bit inputs exceeds.*±250"):
        plan_row_blocks(np.array([[100], [100], [300], [1]]), 1, 250)
    # the planned peak is the true extreme of x_c @ M over the centred input box (its vertices)
    M = rng.integers(-127, 128, size=(6, 5))
    vertices = np.array(np.meshgrid(*[[-8, 7]] * 6)).reshape(6, -1).T  # 4-bit codes centred to [-8, 7]
    reach = int(np.abs(vertices @ M).max())
    assert plan_row_blocks(M, 4, reach) == [(0, 6)]
    assert len(plan_row_blocks(M, 4, reach - 1)) > 1


def test_too_wide_inputs_are_refused_with_the_limit(backend):
    M = np.full((4, 2), 127)
    with pytest.raises(ValueError, match="accumulator.*lower input_bits to at most 20"):
        backend.server(M, 22)
    with pytest.raises(ValueError, match="accumulator.*lower input_bits to at most 20"):
        backend.error_bound(MatrixSpec(4, 2, 22), 127)
    assert backend.error_bound(MatrixSpec(4, 2, 20), 127) > 0  # 20 bits still fit, one row per block


def _holds(obj, private_bytes, chunk, seen=None, depth=0):
    """True when ``obj`` (recursively) holds a PrivateKey or the private key's serialized bytes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return False
    seen.add(id(obj))
    if isinstance(obj, fhext.PrivateKey):
        return True
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        return data == private_bytes or chunk in data
    if isinstance(obj, np.ndarray):
        return chunk in obj.tobytes()
    if isinstance(obj, (str, int, float, bool, type(None), type)) or callable(obj) and not hasattr(obj, "__dict__"):
        return False
    if isinstance(obj, dict):
        return any(
            _holds(k, private_bytes, chunk, seen, depth + 1) or _holds(v, private_bytes, chunk, seen, depth + 1)
            for k, v in obj.items()
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_holds(v, private_bytes, chunk, seen, depth + 1) for v in obj)
    fields = dict(getattr(obj, "__dict__", {}))
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            fields[slot] = getattr(obj, slot)
    return any(_holds(v, private_bytes, chunk, seen, depth + 1) for v in fields.values())


def test_the_server_never_holds_the_private_key(backend):
    from veilml.linear.glwe.keys import COMPRESSION_KEYS

    worker = Worker({"fc": rng.normal(size=(16, 8))}, backend=backend)
    executor = EncryptedLinearExecutor(LocalTransport(worker), backend=backend)
    executor.forward("fc", rng.normal(size=(2, 16)))
    executor.backward("fc", rng.normal(size=(2, 8)))
    session = executor.session
    private_bytes = session._private_key.serialize()
    chunk = private_bytes[len(private_bytes) // 2 : len(private_bytes) // 2 + 256]
    assert _holds(session, private_bytes, chunk)  # the probe finds the key where it is
    assert not _holds(worker, private_bytes, chunk)
    assert not _holds(COMPRESSION_KEYS, private_bytes, chunk)
    for keys in worker.session_keys.values():
        assert private_bytes[:4096] not in keys and chunk not in keys


def test_wrong_shapes_and_messages_give_clear_errors(backend, session):
    M = rng.integers(-127, 128, size=(12, 5))
    server = backend.server(M, 8)
    keys = session.register("m", server.spec, server.setup())
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        session.encrypt("m", np.zeros((2, 11), np.int64))
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        session.encrypt("m", np.zeros(12, np.int64))
    with pytest.raises(TypeError, match="integer codes"):
        session.encrypt("m", np.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        session.encrypt("m", np.full((1, 12), 256))
    with pytest.raises(KeyError, match="not registered"):
        session.encrypt("nope", np.zeros((1, 12), np.int64))
    with pytest.raises(ValueError, match="2-D matrix"):
        backend.server(np.zeros((2, 3, 4), np.int64), 8)
    with pytest.raises(ValueError, match="non-empty"):
        backend.server(np.zeros((0, 4), np.int64), 8)
    with pytest.raises(ValueError, match="client expects"):
        session.register("bad", MatrixSpec(12, 6, 8), server.setup())
    with pytest.raises(ValueError, match="not a GLWE setup"):
        session.register("bad", MatrixSpec(12, 5, 8), b"")
    params = json.loads(fhext.default_params())
    params["packing_ks_level"] = 3
    with pytest.raises(ValueError, match="other GLWE crypto parameters"):
        session.register("bad", server.spec, GLWEBackend(crypto_params=params).server(M, 8).setup())

    # a ciphertext for another matrix, garbage, and a lying header are refused, not crashed on
    other = backend.server(rng.integers(-127, 128, size=(7, 5)), 8)
    session.register("other", other.spec, other.setup())
    with pytest.raises(ValueError, match="rows of 7 features; this matrix takes 12"):
        server.run(session.encrypt("other", np.zeros((1, 7), np.int64)), keys)
    with pytest.raises(ValueError):
        server.run(b"garbage", keys)
    header, block = unpack_frames(session.encrypt("m", np.zeros((1, 12), np.int64)))
    with pytest.raises(ValueError, match="could not read the encrypted rows"):
        server.run(pack_frames([header, block[:100]]), keys)
    forged = unpack_frames(session.encrypt("other", np.zeros((1, 7), np.int64)))[1]
    with pytest.raises(ValueError, match="could not multiply"):
        server.run(pack_frames([header, forged]), keys)
    with pytest.raises(ValueError, match="expected 1 encrypted row blocks"):
        server.run(pack_frames([header, block, block]), keys)

    result = server.run(session.encrypt("m", np.zeros((2, 12), np.int64)), keys)
    with pytest.raises(ValueError, match="expected 7"):
        session.decrypt("other", result)
    assert session.decrypt("m", server.run(session.encrypt("m", np.zeros((0, 12), np.int64)), keys)).shape == (0, 5)


def test_float_forward_backward_through_the_worker_matches_clear(backend):
    W, bias = rng.normal(size=(16, 12)), rng.normal(size=12)
    x, g = rng.normal(size=(3, 16)), rng.normal(size=(3, 12))
    results = {}
    for name in ("clear", "glwe"):
        chosen = backend if name == "glwe" else name
        worker = Worker({"fc": W}, biases={"fc": bias}, backend=chosen)
        executor = EncryptedLinearExecutor(LocalTransport(worker), backend=chosen)
        results[name] = executor.forward("fc", x), executor.backward("fc", g)
    for approx, reference in zip(results["glwe"], results["clear"]):
        relative = np.linalg.norm(approx - reference) / np.linalg.norm(reference)
        assert 0 < relative < 1e-2, relative
    assert np.linalg.norm(results["glwe"][0] - x @ W - bias) / np.linalg.norm(x @ W + bias) < 0.05


def test_keys_are_checked_and_bound_to_the_parameters(backend, session):
    """Finding 3: the glwe server accepted any bytes as a key; a junk key gave its session a permanent 400."""
    server = backend.server(rng.integers(-127, 128, size=(6, 4)), 8)
    keys = session.register("bound", server.spec, server.setup())
    server.check_keys(keys)  # the session's own key passes
    header, key = unpack_frames(keys)
    described = json.loads(header)
    for junk, words in [
        (b"junk", "truncated"),
        (pack_frames([b"{}", key]), "veilml-glwe-key"),
        (pack_frames([json.dumps({**described, "params": "0" * 16}).encode(), key]), "other crypto parameters"),
        (pack_frames([header, key[:1000]]), "its header says"),
        (pack_frames([json.dumps({**described, "bytes": 1000}).encode(), key[:1000]]), "could not deserialize"),
    ]:
        with pytest.raises(ValueError, match=words):
            server.check_keys(junk)
    worker = Worker({"fc": rng.normal(size=(6, 4))}, backend=backend)
    grant = worker.open_session()
    with pytest.raises(WorkerError, match="not evaluation keys") as error:
        worker.register(grant.id, grant.secret, "*", "*", b"junk")
    assert error.value.status == 400 and not worker.session_keys


def test_requests_over_max_rows_are_refused(backend):
    """Finding 5: glwe requests skipped max_rows (5 rows were served with max_rows=2)."""
    worker = Worker({"fc": rng.normal(size=(6, 4))}, backend=backend, max_rows=2)
    executor = EncryptedLinearExecutor(LocalTransport(worker), backend=backend)
    assert executor.forward("fc", rng.normal(size=(5, 6))).shape == (5, 4)  # the executor sends 2 + 2 + 1 rows
    ciphertext = executor.session.encrypt("fc/forward", np.zeros((5, 6), np.int64))  # past the executor's split
    with pytest.raises(WorkerError, match="5 rows in one request, over this worker's limit of 2") as error:
        executor.routes["fc"].run(executor.sessions[0], "fc", "forward", ciphertext)
    assert error.value.status == 413


def test_a_header_cannot_hide_rows_from_max_rows(backend, session):
    """A glwe request whose header announces fewer rows than it encrypts is refused by its size."""
    server = backend.server(rng.integers(-127, 128, size=(6, 4)), 8)
    keys = session.register("liar", server.spec, server.setup())
    _, honest_block = unpack_frames(session.encrypt("liar", np.zeros((1, 6), np.int64)))
    header, block = unpack_frames(session.encrypt("liar", np.zeros((4, 6), np.int64)))
    lying = json.loads(header)
    lying["n"] = 1
    with pytest.raises(ValueError, match="more than the 1 rows its header announces"):
        server.run(pack_frames([json.dumps(lying).encode(), block]), keys)
    assert len(server.run(pack_frames([json.dumps(lying).encode(), honest_block]), keys)) > 0
