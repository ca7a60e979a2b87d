"""Remote linear layers: quantization math, the clear and concrete backends, the worker core and its sessions."""

import numpy as np
import pytest

from veilml.linear import (
    EncryptedLinearExecutor,
    InsecureBackendError,
    LocalTransport,
    MatrixSpec,
    Worker,
    WorkerError,
    get_backend,
    pack_frames,
    unpack_frames,
)
from veilml.quantization import QuantizedWeight, backward_input, backward_output, forward_output, quantize_rows

rng = np.random.default_rng(0)


def test_weight_quantization_is_symmetric_per_output_channel():
    W = rng.normal(size=(16, 8)) * np.arange(1, 9)  # very different column scales
    qw = QuantizedWeight.from_float(W, 8)
    assert qw.q.min() >= -127 and qw.q.max() <= 127 and qw.scale.shape == (8,)
    assert np.all(np.abs(qw.q).max(axis=0) == 127)  # every channel uses its full grid
    assert np.all(np.abs(qw.dequantize() - W) <= qw.scale / 2 + 1e-12)


def test_client_side_correction_recovers_the_float_products():
    W, x, g = rng.normal(size=(32, 24)), rng.normal(size=(6, 32)) + 3.0, rng.normal(size=(6, 24))
    qw = QuantizedWeight.from_float(W, 8)
    codes, s, z = quantize_rows(x, 8)
    assert codes.min() >= 0 and codes.max() <= 255 and np.all(z != 0)  # asymmetric rows
    y = forward_output(codes @ qw.q, s, z, qw.scale, qw.col_sums)
    gcodes, gs, gz = quantize_rows(backward_input(g, qw.scale), 8)
    dx = backward_output(gcodes @ qw.q.T, gs, gz, qw.row_sums)
    # 8-bit error as a fraction of the largest product, measured on these draws (file order): forward 0.95 %,
    # backward 0.66 % (0.69 % / 0.60 % when run alone; worst over 200 draws of these shapes: 1.1 % / 1.3 %)
    assert np.abs(y - x @ W).max() <= 0.02 * np.abs(x @ W).max()
    assert np.abs(dx - g @ W.T).max() <= 0.02 * np.abs(g @ W.T).max()
    # the correction is exact algebra: it reproduces the products of the dequantized codes to float rounding
    # (measured 3e-16 of the largest value), so a wrong zero-point or scale term cannot hide in the 8-bit error
    xd = (codes - z[:, None]) * s[:, None]
    np.testing.assert_allclose(y, xd @ qw.dequantize(), rtol=1e-10, atol=1e-10 * np.abs(y).max())
    gd = (gcodes - gz[:, None]) * gs[:, None]  # dequantized rows of g * weight_scale: gd @ q.T is (gd / scale) @ (q * scale).T
    np.testing.assert_allclose(dx, gd @ qw.q.T, rtol=1e-10, atol=1e-10 * np.abs(dx).max())
    np.testing.assert_allclose(dx, (gd / qw.scale[None, :]) @ qw.dequantize().T, rtol=1e-10, atol=1e-10 * np.abs(dx).max())


def test_per_row_scales_isolate_an_outlier_token():
    x = rng.normal(size=(4, 64))
    x[0] *= 1000.0
    codes, s, z = quantize_rows(x, 8)
    xd = (codes - z[:, None]) * s[:, None]
    assert np.abs(xd[1:] - x[1:]).max() < 0.05  # a per-tensor grid would lose rows 1..3 entirely


def test_quantize_rows_rejects_nan():
    with pytest.raises(ValueError, match="NaN or inf.*learning rate"):
        quantize_rows(np.array([[0.0, np.nan]]))


def test_frames_round_trip_and_reject_garbage():
    frames = [b"", b"abc", bytes(1000)]
    assert unpack_frames(pack_frames(frames)) == frames
    for bad in (b"", b"\x01\x00\x00\x00", pack_frames([b"x"]) + b"!", pack_frames([b"xyz"])[:-1]):
        with pytest.raises(ValueError):
            unpack_frames(bad)


@pytest.mark.parametrize("name", ["clear", "concrete"])
def test_backends_compute_exact_integer_products(name):
    M = rng.integers(-127, 128, size=(24, 16))
    backend = get_backend(name)
    server, session = backend.server(M, 8), backend.session()
    keys = session.register("m", server.spec, server.setup())
    x = rng.integers(0, 256, size=(2, 24))
    x[0] = 255  # the widest input with extreme column sums must not wrap
    result = session.decrypt("m", server.run(session.encrypt("m", x), keys))
    assert np.array_equal(result, x @ M)


def test_non_contiguous_weights_and_rows_give_the_same_products():
    """concrete-python 2.11 silently miscomputes non-C-contiguous inputs: every boundary copies."""
    M = rng.integers(-127, 128, size=(16, 12))
    x = rng.integers(0, 256, size=(12, 2)).T  # transposed: a non-contiguous (2, 12) view
    backend = get_backend("concrete")
    server = backend.server(M.T, 8)  # non-contiguous view
    assert not M.T.flags["C_CONTIGUOUS"] and server.matrix.flags["C_CONTIGUOUS"]
    session = backend.session()
    keys = session.register("m", server.spec, server.setup())
    assert not x.flags["C_CONTIGUOUS"]
    assert np.array_equal(session.decrypt("m", server.run(session.encrypt("m", x), keys)), x @ M.T)


def test_concrete_equals_clear_through_the_executor():
    W, b = rng.normal(size=(16, 12)), rng.normal(size=12)
    x, g = rng.normal(size=(3, 16)), rng.normal(size=(3, 12))
    outputs = {}
    for name in ("clear", "concrete"):
        executor = EncryptedLinearExecutor(LocalTransport(Worker({"layer": W}, {"layer": b}, backend=name)), backend=name)
        outputs[name] = executor.forward("layer", x), executor.backward("layer", g)
    assert np.array_equal(outputs["clear"][0], outputs["concrete"][0])
    assert np.array_equal(outputs["clear"][1], outputs["concrete"][1])
    assert np.allclose(outputs["clear"][0], x @ W + b, atol=0.05 * np.abs(x @ W).max())


def clear_executor(worker: Worker) -> EncryptedLinearExecutor:
    return EncryptedLinearExecutor(LocalTransport(worker), backend="clear")


def test_worker_errors_and_what_it_holds():
    worker = Worker({"a": rng.normal(size=(8, 4))}, backend="clear")
    transport = LocalTransport(worker)
    executor = EncryptedLinearExecutor(transport, backend="clear")
    executor.forward("a", rng.normal(size=(2, 8)))
    (session,) = executor.sessions
    secret = transport._secrets[session]
    # the worker holds weights, public layer data and evaluation keys: nothing that decrypts
    assert set(worker.session_keys) == {(session, "*", "*")}  # one (empty) key for all matrices
    with pytest.raises(WorkerError, match="does not serve layer 'b'") as error:
        worker.run(session, secret, "b", "forward", b"")
    assert error.value.status == 404
    with pytest.raises(WorkerError, match="unknown direction") as error:
        worker.setup("a", "sideways")
    assert error.value.status == 400
    with pytest.raises(WorkerError, match="unknown session") as error:
        worker.run("0" * 32, secret, "a", "forward", b"")
    assert error.value.status == 401 and error.value.code == "unknown-session"
    other = worker.open_session()
    with pytest.raises(WorkerError, match="registered no evaluation key") as error:
        worker.run(other.id, other.secret, "a", "forward", b"")
    assert error.value.status == 401 and error.value.code == "no-keys"
    with pytest.raises(WorkerError, match="bad ciphertext") as error:
        worker.run(session, secret, "a", "forward", b"garbage")
    assert error.value.status == 400
    with pytest.raises(ValueError, match="takes rows of 8 features"):
        executor.forward("a", rng.normal(size=(2, 7)))
    with pytest.raises(KeyError, match="no worker serves layer 'zz'"):
        executor.forward("zz", rng.normal(size=(2, 8)))


def test_matrix_spec_checks_codes():
    spec = MatrixSpec(4, 2, 8)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        spec.check_input(np.array([[0, 1, 2, 256]]))
    with pytest.raises(TypeError, match="integer codes"):
        spec.check_input(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        spec.check_input(np.zeros((1, 3), dtype=np.int64))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown encrypted-linear backend 'tfhe'"):
        get_backend("tfhe")


def test_several_workers_each_serve_a_subset_of_layers():
    weights = {f"layer{i}": rng.normal(size=(8, 6)) for i in range(3)}
    first = Worker({k: weights[k] for k in ("layer0", "layer1")}, backend="clear")
    second = Worker({"layer2": weights["layer2"]}, backend="clear")
    executor = EncryptedLinearExecutor([LocalTransport(first), LocalTransport(second)], backend="clear")
    single = clear_executor(Worker(weights, backend="clear"))
    x = rng.normal(size=(2, 8))
    for name in weights:
        assert np.array_equal(executor.forward(name, x), single.forward(name, x))
    assert [{k[0] for k in first.session_keys}, {k[0] for k in second.session_keys}] == [{s} for s in executor.sessions]
    with pytest.raises(ValueError, match="served by two workers"):
        EncryptedLinearExecutor(
            [LocalTransport(first), LocalTransport(Worker({"layer0": weights["layer0"]}, backend="clear"))], backend="clear"
        )


def requests_rows(worker: Worker) -> list[int]:
    """The rows of every request ``worker`` runs from now on (a list that fills as it runs)."""
    sizes, run = [], worker.run

    def counting_run(session, secret, layer, direction, ciphertext):
        sizes.append(worker.servers[(layer, direction)].request_rows(ciphertext))
        return run(session, secret, layer, direction, ciphertext)

    worker.run = counting_run
    return sizes


def test_worker_refuses_too_many_rows_and_the_executor_sends_no_more():
    worker = Worker({"a": rng.normal(size=(8, 4))}, max_rows=3, backend="clear")
    executor = clear_executor(worker)
    sizes = requests_rows(worker)
    assert executor.max_rows("a") == 3  # the worker's own limit, through the transport
    x, g = rng.normal(size=(7, 8)), rng.normal(size=(4, 4))
    y, dx = executor.forward("a", x), executor.backward("a", g)
    assert sizes == [3, 3, 1, 3, 1]  # split by the worker's limit
    # rows are quantized one by one: the split changes nothing
    assert np.array_equal(y, np.concatenate([executor.forward("a", x[i : i + 1]) for i in range(7)]))
    assert np.array_equal(dx, np.concatenate([executor.backward("a", g[i : i + 1]) for i in range(4)]))
    # a request over the limit that skips the executor's split is refused
    ciphertext = executor.session.encrypt("a/forward", np.zeros((4, 8), np.int64))
    with pytest.raises(WorkerError, match="4 rows in one request, over this worker's limit of 3") as error:
        executor.routes["a"].run(executor.sessions[0], "a", "forward", ciphertext)
    assert error.value.status == 413


def test_a_transport_without_max_rows_gets_the_default_limit():
    from veilml.linear.limits import DEFAULT_MAX_ROWS

    class OlderTransport:  # a Transport written before max_rows was part of it
        def __init__(self, worker):
            self._local = LocalTransport(worker)
            self.backend = self._local.backend

        def __getattr__(self, name):
            if name == "max_rows":
                raise AttributeError(name)
            return getattr(self._local, name)

    worker = Worker({"a": rng.normal(size=(8, 4))}, max_rows=3, backend="clear")
    executor = EncryptedLinearExecutor(OlderTransport(worker), backend="clear")
    assert executor.max_rows("a") == DEFAULT_MAX_ROWS and Worker({}, backend="clear").max_rows == DEFAULT_MAX_ROWS


# -- finding 2: plaintext is never a default, and never silent -----------------------------------------


def test_worker_defaults_to_an_encrypting_backend():
    assert Worker({"a": rng.normal(size=(4, 2))}).backend == "bfv"


def test_client_refuses_a_plaintext_worker_unless_it_asks_for_plaintext():
    worker = Worker({"a": rng.normal(size=(8, 4))}, backend="clear")
    with pytest.raises(InsecureBackendError, match="UNENCRYPTED.*backend='clear'"):
        EncryptedLinearExecutor(LocalTransport(worker))  # as the README's client is written
    assert not worker.sessions  # refused before anything was sent
    x = rng.normal(size=(2, 8))
    assert clear_executor(worker).forward("a", x).shape == (2, 4)  # an explicit choice works
    with pytest.raises(ValueError, match="now called 'clear'"):
        get_backend("simulate")


# -- finding 3: sessions belong to their client ---------------------------------------------------------


def test_a_session_cannot_be_used_or_rekeyed_without_its_secret():
    worker = Worker({"a": rng.normal(size=(8, 4))}, backend="clear")
    victim, attacker = worker.open_session(), worker.open_session()
    assert victim.id != attacker.id and victim.secret != attacker.secret and len(victim.secret) >= 32
    assert victim.secret not in repr(victim) and victim.secret.encode() not in repr(worker.sessions).encode()
    worker.register(victim.id, victim.secret, "*", "*", b"")
    for secret, status, words in (
        (attacker.secret, 403, "belongs to another client"),
        (None, 401, "needs the secret"),
        ("", 401, "needs the secret"),
    ):
        with pytest.raises(WorkerError, match=words) as error:
            worker.register(victim.id, secret, "a", "forward", b"")
        assert error.value.status == status
        with pytest.raises(WorkerError, match=words):
            worker.run(victim.id, secret, "a", "forward", b"")
    worker.register(victim.id, victim.secret, "*", "*", b"")  # the same keys again: a harmless retry
    assert worker.session_keys == {(victim.id, "*", "*"): b""}


def test_registered_keys_cannot_be_replaced_even_by_their_owner(monkeypatch):
    from veilml.linear.clear import ClearServer

    monkeypatch.setattr(ClearServer, "check_keys", lambda self, keys: None)  # any bytes count as keys here
    worker = Worker({"a": rng.normal(size=(8, 4))}, backend="clear")
    grant = worker.open_session()
    worker.register(grant.id, grant.secret, "a", "forward", b"first")
    with pytest.raises(WorkerError, match="cannot be replaced: open a new session") as error:
        worker.register(grant.id, grant.secret, "a", "forward", b"second")
    assert error.value.status == 409 and worker.session_keys == {(grant.id, "a", "forward"): b"first"}


# -- finding 1: the client does not trust the worker's crypto parameters ---------------------------------


class TamperedSetup:
    """A transport to an honest worker, except that the setup it hands over is edited on the way."""

    def __init__(self, inner: LocalTransport, edit) -> None:
        self.inner, self.edit, self.backend, self.registered = inner, edit, inner.backend, []

    def layers(self):
        return self.inner.layers()

    def setup(self, layer, direction):
        return self.edit(self.inner.setup(layer, direction))

    def open_session(self):
        return self.inner.open_session()

    def register(self, session, layer, direction, keys):
        self.registered.append(keys)
        self.inner.register(session, layer, direction, keys)

    def run(self, session, layer, direction, ciphertext):
        return self.inner.run(session, layer, direction, ciphertext)


def _toy_parameters(setup: bytes) -> bytes:
    import json

    specs = json.loads(setup)
    specs["keyset"]["lweSecretKeys"][0]["params"]["lweDimension"] = 16
    for value in specs["circuits"][0]["inputs"] + specs["circuits"][0]["outputs"]:
        value["typeInfo"]["lweCiphertext"]["encryption"].update(lweDimension=16, variance=0.0)
    return json.dumps(specs).encode()


def test_client_refuses_a_worker_that_hands_it_toy_parameters(tmp_path):
    from veilml.linear.concrete import ConcreteBackend
    from veilml.runtime.security import InsecureParametersError

    backend = ConcreteBackend(cache_dir=tmp_path)
    worker = Worker({"a": rng.normal(size=(8, 4))}, backend=backend)
    tampered = TamperedSetup(LocalTransport(worker), _toy_parameters)
    executor = EncryptedLinearExecutor(tampered)
    with pytest.raises(InsecureParametersError, match="dimension 16.*refuse this server"):
        executor.forward("a", rng.normal(size=(1, 8)))
    assert tampered.registered == [] and not executor.session._clients  # no key was made, nothing was sent
    shape = TamperedSetup(LocalTransport(worker), lambda setup: setup.replace(b'"dimensions": [8]', b'"dimensions": [9]', 1))
    with pytest.raises(ValueError, match="refuse this worker"):
        EncryptedLinearExecutor(shape).forward("a", rng.normal(size=(1, 8)))
    honest = EncryptedLinearExecutor(LocalTransport(worker))
    x = rng.normal(size=(2, 8))
    assert np.array_equal(
        honest.forward("a", x), clear_executor(Worker({"a": worker.weights["a"]}, backend="clear")).forward("a", x)
    )


# -- finding 4: untrusted bytes are checked before native code, and native work is bounded -----------------


class Stalling:
    """Stands in for a concrete worker's isolated runner: the computation it is given never returns."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def run(self, function, *args, timeout=None):
        import isolation_helpers

        return self.runner.run(isolation_helpers.spin, timeout=1.0)


def test_concrete_worker_refuses_tampered_or_foreign_bytes_and_keeps_serving(tmp_path):
    from veilml.linear.concrete import ConcreteBackend, shared_runner
    from veilml.runtime.envelope import unpack_envelope

    backend = ConcreteBackend(cache_dir=tmp_path)
    W = rng.normal(size=(8, 4))
    worker = Worker({"a": W, "b": rng.normal(size=(4, 8))}, backend=backend)
    transport = LocalTransport(worker)
    executor = EncryptedLinearExecutor(transport)
    reference = clear_executor(Worker({"a": W}, backend="clear"))
    x = rng.normal(size=(2, 8))
    assert np.array_equal(executor.forward("a", x), reference.forward("a", x))
    (session,) = executor.sessions
    secret = transport._secrets[session]
    codes = rng.integers(0, 256, size=(1, 8))
    good = executor.session.encrypt("a/forward", codes)
    (frame,) = unpack_frames(good)
    header_size = len(frame) - len(unpack_envelope(frame, "ciphertext").payload)
    flipped = bytearray(frame)
    flipped[header_size + 20] ^= 0x10  # a bit of concrete's own header: it once made a worker spin for minutes
    cases = [
        (pack_frames([bytes(flipped)]), "layout"),
        (pack_frames([frame[:-8]]), "announces a payload"),
        (pack_frames([frame[header_size:]]), "not a veilml envelope"),
    ]
    executor.forward("b", rng.normal(size=(1, 4)))  # registers b
    cases.append((executor.session.encrypt("b/forward", rng.integers(0, 256, size=(1, 4))), "another model"))
    for body, words in cases:
        with pytest.raises(WorkerError, match=words) as error:
            worker.run(session, secret, "a", "forward", body)
        assert error.value.status == 400
    # a computation that never returns (as a flipped bit once made concrete do) is stopped in its isolated
    # process after the time limit: one error, and the worker goes on serving
    server = worker.servers[("a", "forward")]
    server._runner = Stalling(shared_runner())
    with pytest.raises(WorkerError, match="did not finish within 1 s") as error:
        worker.run(session, secret, "a", "forward", good)
    assert error.value.status == 400
    server._runner = None
    assert np.array_equal(
        executor.session.decrypt("a/forward", worker.run(session, secret, "a", "forward", good)), codes @ server.matrix
    )


def test_concrete_circuits_are_cached_on_disk(tmp_path):
    from veilml.linear.concrete import ConcreteBackend

    M = rng.integers(-127, 128, size=(6, 5))
    first = ConcreteBackend(cache_dir=tmp_path).server(M, 8)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entry.iterdir()) == ["client.specs.json", "layout.bin", "manifest.json", "server.zip"]
    second = ConcreteBackend(cache_dir=tmp_path).server(M, 8)  # a restart: loaded, not compiled
    assert second.setup() == first.setup() and second.circuit.directory == entry
    (entry / "layout.bin").write_bytes(b"tampered")  # a corrupt entry is compiled again, never loaded
    third = ConcreteBackend(cache_dir=tmp_path).server(M, 8)
    assert third.circuit.layout == first.circuit.layout


def test_concrete_sessions_never_share_or_store_secret_keys(tmp_path):
    """Finding 6: the concrete key cache wrote secret keys 0644 and handed one key to several sessions."""
    from veilml.linear.concrete import ConcreteBackend

    backend = ConcreteBackend(cache_dir=tmp_path)
    server = backend.server(rng.integers(-127, 128, size=(6, 5)), 8)
    before = {p for p in tmp_path.rglob("*")}
    keys = []
    for _ in range(2):
        session = backend.session()
        session.register("m", server.spec, server.setup())
        keys.append(session._clients["m"]._client.keys.serialize())
    assert keys[0] != keys[1]  # a fresh secret key per session
    assert {p for p in tmp_path.rglob("*")} == before  # and none written anywhere under the cache


def test_client_refuses_an_answer_with_the_wrong_number_of_rows():
    class Truncating(LocalTransport):
        def run(self, session, layer, direction, ciphertext):
            from veilml.linear.clear import pack_integers, unpack_integers

            return pack_integers(unpack_integers(super().run(session, layer, direction, ciphertext))[:1])

    executor = EncryptedLinearExecutor(Truncating(Worker({"a": rng.normal(size=(8, 4))}, backend="clear")), backend="clear")
    with pytest.raises(ValueError, match=r"shape \(1, 4\) for 5 rows sent"):
        executor.forward("a", rng.normal(size=(5, 8)))
