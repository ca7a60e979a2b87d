"""veilml's seeded input ciphertexts (runtime/seeded_inputs.py): exact against concrete, checked on the server."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from veilml.compiler import Configuration
from veilml.runtime.seeded_inputs import (
    MAGIC,
    SeededEncryptor,
    SeededInputError,
    SeededInputs,
    input_secret_key,
    seeded_input_spec,
)
from veilml.runtime.validation import learn_circuit_layout


@pytest.fixture(scope="module", params=[False, True], ids=["unsigned", "signed"])
def circuit(request):
    """A concrete circuit with one uncompressed input of 300 values, compiled and keyed."""
    from concrete import fhe

    signed = request.param
    table = fhe.LookupTable([(3 * v + 1) % 8 for v in range(8)])

    def f(x):
        return table[x + 4] if signed else table[x]

    values = np.arange(-4, 4) if signed else np.arange(8)
    inputset = [np.resize(values, 300), np.resize(values[::-1], 300)]
    compiled = fhe.Compiler(f, {"x": "encrypted"}).compile(inputset, Configuration().to_concrete())
    compiled.keygen()
    spec = seeded_input_spec(compiled.client.specs)
    return compiled, spec, values, f


def _phases(payload: bytes, spec, key: np.ndarray) -> np.ndarray:
    """body - <mask, s> of every ciphertext of a payload (the test holds the secret key)."""
    from veilml.runtime.seeded_inputs import _HEAD, _keystream

    seed = _HEAD.unpack_from(payload)[-1]
    masks = _keystream(seed, spec.count, spec.dimension)[:, : spec.dimension]
    bodies = np.frombuffer(payload, dtype="<u8", offset=_HEAD.size)
    return bodies - masks @ key


@pytest.mark.execute  # real keys and encryption, concrete's server runs the rows
def test_seeded_inputs_compute_what_concrete_computes(circuit):
    compiled, spec, values, f = circuit
    assert spec is not None and spec.shape == (300,) and spec.signed == (values.min() < 0)
    server_side = SeededInputs(spec, learn_circuit_layout(compiled.client.specs).inputs[0])
    encryptor = SeededEncryptor(spec, input_secret_key(compiled.keys, spec))
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.choice(values, 300)
        payload = encryptor.encrypt(x)
        assert len(payload) == 40 + 8 * 300  # one seed per row, 8 bytes per ciphertext
        from concrete import fhe

        value = fhe.Value.deserialize(server_side.to_concrete(payload))
        result = compiled.decrypt(compiled.server.run(value, evaluation_keys=compiled.keys.evaluation))
        np.testing.assert_array_equal(result, f(x))


def test_noise_has_the_specified_deviation_and_encodes_with_one_padding_bit(circuit):
    compiled, spec, values, _ = circuit
    key = input_secret_key(compiled.keys, spec)
    x = np.resize(values, 300)
    noise = []
    for _ in range(4):
        phases = _phases(SeededEncryptor(spec, key).encrypt(x), spec, key)
        delta = np.uint64(1 << (64 - spec.width - 1))
        noise.append((phases - x.astype(np.int64).view(np.uint64) * delta).view(np.int64).astype(np.float64))
    noise = np.concatenate(noise)
    expected = np.sqrt(spec.variance) * 2.0**64
    assert abs(noise.std() / expected - 1) < 0.15  # 1,200 samples: the estimate is within ~2 %
    assert abs(noise.mean()) < 0.2 * expected


def test_every_encryption_draws_a_new_seed_and_new_noise(circuit):
    compiled, spec, values, _ = circuit
    encryptor = SeededEncryptor(spec, input_secret_key(compiled.keys, spec))
    x = np.resize(values, 300)
    a, b = encryptor.encrypt(x), encryptor.encrypt(x)
    assert a[24:40] != b[24:40] and a[40:] != b[40:]


def test_the_client_refuses_rows_it_cannot_encrypt(circuit):
    compiled, spec, values, _ = circuit
    encryptor = SeededEncryptor(spec, input_secret_key(compiled.keys, spec))
    with pytest.raises(ValueError, match="shape"):
        encryptor.encrypt(np.zeros(299, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        encryptor.encrypt(np.zeros(300, dtype=np.float64))
    with pytest.raises(ValueError, match="must be in"):
        encryptor.encrypt(np.full(300, values.max() + 2**spec.width))


def test_the_server_refuses_malformed_or_foreign_payloads(circuit):
    compiled, spec, values, _ = circuit
    server_side = SeededInputs(spec, learn_circuit_layout(compiled.client.specs).inputs[0])
    good = SeededEncryptor(spec, input_secret_key(compiled.keys, spec)).encrypt(np.resize(values, 300))
    with pytest.raises(SeededInputError, match="bytes"):
        server_side.to_concrete(good[:-8])
    with pytest.raises(SeededInputError, match="magic"):
        server_side.to_concrete(b"X" + good[1:])
    head = struct.Struct("<8sHHIQ16s")
    _, version, reserved, dimension, count, seed = head.unpack_from(good)
    with pytest.raises(SeededInputError, match="dimension"):
        server_side.to_concrete(head.pack(MAGIC, version, reserved, dimension + 1, count, seed) + good[head.size :])
    with pytest.raises(SeededInputError, match="magic, version"):
        server_side.to_concrete(head.pack(MAGIC, version + 1, reserved, dimension, count, seed) + good[head.size :])


def test_configuration_chooses_who_encrypts():
    assert Configuration().input_encryption == "veilml"
    assert Configuration().to_concrete().compress_input_ciphertexts is False
    assert Configuration(input_encryption="concrete").to_concrete().compress_input_ciphertexts is True
    with pytest.raises(TypeError, match="compress_input_ciphertexts.*input_encryption"):  # the setting is gone
        Configuration(input_encryption="concrete", compress_input_ciphertexts=False)
    with pytest.raises(ValueError, match="input_encryption"):
        Configuration(input_encryption="plain")


@pytest.mark.execute
def test_a_concrete_encrypted_model_still_runs(cancer, test_config):
    """``input_encryption="concrete"``: concrete's seeded inputs, the same integers."""
    import veilml

    X_train, X_test, y_train, _ = cancer
    model = veilml.DecisionTreeClassifier(max_depth=2, n_bits=3, random_state=0).fit(X_train, y_train)
    model.compile(X_train, test_config.fork(input_encryption="concrete"))
    assert model.fhe_model_.client()._input_spec is None  # concrete encrypts
    rows = X_test[:2]
    np.testing.assert_array_equal(model.predict_integers(rows, "execute"), model.predict_integers(rows, "simulate"))
    # concrete's bytes are checked against the input's learned layout before concrete reads them
    from veilml.runtime.envelope import pack_envelope, unpack_envelope
    from veilml.runtime.validation import LayoutError

    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    keys = client.evaluation_keys()
    value = unpack_envelope(client.encrypt(rows[:1])[0], "ciphertext")
    truncated = pack_envelope("ciphertext", value.payload[:-8], fingerprint=value.fingerprint, key_id=value.key_id)
    with pytest.raises(LayoutError, match="not one of this circuit's inputs"):
        server.run(truncated, keys)


def test_the_server_expands_only_the_masks_it_reads(circuit):
    from veilml.runtime.seeded_inputs import _keystream, _masks_of

    _, spec, _, _ = circuit
    seed = bytes(range(16))
    picks = np.array([0, 1, 7, 299, 150])
    full = _keystream(seed, 300, spec.dimension)[:, : spec.dimension]
    np.testing.assert_array_equal(_masks_of(seed, picks, spec.dimension), full[picks])


def test_a_narrowed_input_reads_only_the_gathered_elements():
    """The circuit takes the gathered elements (compiler/narrowing.py); the integers are unchanged."""
    from veilml.compiler import GraphBuilder, evaluate
    from veilml.compiler.narrowing import narrow_input

    g = GraphBuilder()
    x = g.input("x", np.zeros(10), np.full(10, 3))
    a = g.gather(x, [7, 2, 7])
    b = g.gather(x, [5])
    g.output(g.add(g.lut(a, [0, 1, 1, 0]), g.matmul(b, np.ones((1, 3), dtype=np.int64))))
    graph = g.build()
    narrowed, columns = narrow_input(graph)
    np.testing.assert_array_equal(columns, [2, 5, 7])
    assert narrowed.nodes[narrowed.inputs[0]].size == 3
    rows = np.random.default_rng(0).integers(0, 4, size=(20, 10))
    np.testing.assert_array_equal(evaluate(narrowed, [rows[:, columns]])[0], evaluate(graph, [rows])[0])
    # an input read by anything but gathers is kept whole
    h = GraphBuilder()
    y = h.input("y", np.zeros(4), np.ones(4))
    h.output(h.matmul(y, np.ones((4, 1), dtype=np.int64)))
    assert narrow_input(h.build())[1] is None


def test_a_narrowed_tree_circuit_runs_on_whole_rows(compiled_cancer_tree, cancer, no_clip_warning):
    """The client encrypts the whole thermometer row (model-independent); the circuit reads 13 bits."""
    model = compiled_cancer_tree
    compiled = model.fhe_model_.compiled
    assert compiled.input_columns is not None and len(compiled.input_columns) < model.fhe_model_.encoding.size
    assert model.fhe_model_.client().encrypt(cancer[1][:1])[0].count(b"veilmlSI") == 1
    rows = cancer[1][:2]
    np.testing.assert_array_equal(model.predict_integers(rows, "execute"), model.predict_integers(rows, "simulate"))
    assert model.report_.input_bytes == 40 + 8 * model.fhe_model_.encoding.size
