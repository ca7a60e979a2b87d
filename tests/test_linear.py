"""Remote linear layers: quantization math, the simulate and concrete backends, the worker core."""

import numpy as np
import pytest

from veilml.quantization import QuantizedWeight, backward_input, backward_output, forward_output, quantize_rows
from veilml.runtime.linear import MatrixSpec, get_backend, pack_frames, unpack_frames
from veilml.runtime.linear.protocol import EncryptedLinearExecutor, LocalTransport, Worker, WorkerError

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
    assert np.allclose(y, x @ W, rtol=0, atol=0.05 * np.abs(x @ W).max())
    gcodes, gs, gz = quantize_rows(backward_input(g, qw.scale), 8)
    dx = backward_output(gcodes @ qw.q.T, gs, gz, qw.row_sums)
    assert np.allclose(dx, g @ W.T, rtol=0, atol=0.05 * np.abs(g @ W.T).max())
    # the correction is exact algebra: with exact codes it reproduces the dequantized product
    xd = (codes - z[:, None]) * s[:, None]
    assert np.allclose(y, xd @ qw.dequantize())


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


@pytest.mark.parametrize("name", ["simulate", "concrete"])
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


def test_concrete_equals_simulate_through_the_executor():
    W, b = rng.normal(size=(16, 12)), rng.normal(size=12)
    x, g = rng.normal(size=(3, 16)), rng.normal(size=(3, 12))
    outputs = {}
    for name in ("simulate", "concrete"):
        executor = EncryptedLinearExecutor(LocalTransport(Worker({"layer": W}, {"layer": b}, backend=name)))
        outputs[name] = executor.forward("layer", x), executor.backward("layer", g)
    assert np.array_equal(outputs["simulate"][0], outputs["concrete"][0])
    assert np.array_equal(outputs["simulate"][1], outputs["concrete"][1])
    assert np.allclose(outputs["simulate"][0], x @ W + b, atol=0.05 * np.abs(x @ W).max())


def test_worker_errors_and_what_it_holds():
    worker = Worker({"a": rng.normal(size=(8, 4))})
    executor = EncryptedLinearExecutor(LocalTransport(worker))
    executor.forward("a", rng.normal(size=(2, 8)))
    # the worker holds weights, public layer data and evaluation keys: nothing that decrypts
    assert set(worker.session_keys) == {(executor.session_id, "*", "*")}  # one (empty) key for all matrices
    with pytest.raises(WorkerError, match="does not serve layer 'b'") as error:
        worker.run(executor.session_id, "b", "forward", b"")
    assert error.value.status == 404
    with pytest.raises(WorkerError, match="unknown direction") as error:
        worker.setup("a", "sideways")
    assert error.value.status == 400
    with pytest.raises(WorkerError, match="registered no evaluation key") as error:
        worker.run("0" * 32, "a", "forward", b"")
    assert error.value.status == 401
    with pytest.raises(WorkerError, match="bad ciphertext") as error:
        worker.run(executor.session_id, "a", "forward", b"garbage")
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
    first = Worker({k: weights[k] for k in ("layer0", "layer1")})
    second = Worker({"layer2": weights["layer2"]})
    executor = EncryptedLinearExecutor([LocalTransport(first), LocalTransport(second)])
    single = EncryptedLinearExecutor(LocalTransport(Worker(weights)))
    x = rng.normal(size=(2, 8))
    for name in weights:
        assert np.array_equal(executor.forward(name, x), single.forward(name, x))
    assert {k[0] for k in first.session_keys} == {k[0] for k in second.session_keys} == {executor.session_id}
    with pytest.raises(ValueError, match="served by two workers"):
        EncryptedLinearExecutor([LocalTransport(first), LocalTransport(Worker({"layer0": weights["layer0"]}))])


def test_worker_refuses_too_many_rows():
    worker = Worker({"a": rng.normal(size=(8, 4))}, max_rows=3)
    executor = EncryptedLinearExecutor(LocalTransport(worker))
    executor.forward("a", rng.normal(size=(3, 8)))
    with pytest.raises(WorkerError, match="4 rows in one request, over this worker's limit of 3") as error:
        executor.forward("a", rng.normal(size=(4, 8)))
    assert error.value.status == 413
