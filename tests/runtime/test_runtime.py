"""Client / server separation, key handling, envelopes and the checks before native code."""

import gc
import os
import stat

import numpy as np
import pytest

from veilml import DecisionTreeClassifier
from veilml.runtime import FHEClient, FHEServer
from veilml.runtime.envelope import (
    EnvelopeError,
    KeyMismatchError,
    ModelMismatchError,
    key_id,
    pack_envelope,
    specs_fingerprint,
    unpack_envelope,
)
from veilml.runtime.seeded_inputs import SeededInputError
from veilml.runtime.validation import CircuitLayout, LayoutError, StructureTemplate, learn_template


def _secret_types() -> tuple:
    from concrete import fhe
    from concrete.compiler import Keyset, LweSecretKey

    return (fhe.Client, fhe.Keys, Keyset, LweSecretKey, FHEClient)


def _holds_secret(obj, seen=None) -> bool:
    """Whether ``obj`` reaches, through attributes and containers, a concrete Client, Keys or secret key."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, _secret_types()):
        return True
    if isinstance(obj, dict):
        return any(_holds_secret(k, seen) or _holds_secret(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_holds_secret(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return any(_holds_secret(v, seen) for v in vars(obj).values())
    return False


@pytest.mark.execute
def test_client_server_round_trip_and_no_secret_on_server(compiled_cancer_tree, cancer, no_clip_warning):
    model = compiled_cancer_tree
    X = cancer[1][:1]
    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    keys = client.evaluation_keys()
    assert isinstance(keys, bytes) and keys is client.evaluation_keys()  # serialized once
    (ciphertext,) = client.encrypt(X)
    result = server.run(ciphertext, keys)
    assert np.array_equal(client.decrypt([result]), model.decision_scores(X))
    # every byte string that crossed over names this model and this key set
    for data, kind in ((keys, "evaluation-keys"), (ciphertext, "ciphertext"), (result, "result")):
        envelope = unpack_envelope(data, kind)
        assert envelope.fingerprint == server.fingerprint == client.fingerprint
        assert envelope.key_id == client.key_id == key_id(unpack_envelope(keys, "evaluation-keys").payload)
    assert server._layout is not None  # learned during the run, from throw-away keys...
    assert isinstance(server, FHEServer) and not _holds_secret(server)  # ...that it does not keep
    assert _holds_secret(client)  # the check above can see a secret where there is one
    # compressed inputs: a thermometer row of 1,890 bits travels in well under a megabyte
    assert len(ciphertext) < 2**20


@pytest.mark.execute
def test_keys_are_written_0600_and_reload(compiled_cancer_tree, cancer, tmp_path, no_clip_warning):
    model = compiled_cancer_tree
    client = model.fhe_model_.client()
    client.keygen()
    path = client.save_keys(tmp_path / "keys" / "client.keys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    X = cancer[1][:1]
    ciphertext = client.encrypt(X)[0]
    other = FHEClient(model.fhe_model_.compiled.circuit.client.specs, model.fhe_model_.codec)
    other.load_keys(path)
    result = model.fhe_model_.server().run(ciphertext, other.evaluation_keys())
    assert np.array_equal(other.decrypt([result]), model.decision_scores(X))
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        other.load_keys(path)


def test_save_keys_refuses_without_keys(compiled_cancer_tree, tmp_path):
    fresh = FHEClient(compiled_cancer_tree.fhe_model_.compiled.circuit.client.specs, compiled_cancer_tree.fhe_model_.codec)
    with pytest.raises(ValueError, match="call keygen"):
        fresh.save_keys(tmp_path / "k")


def test_write_private_file_tightens_existing_file(tmp_path):
    from veilml.runtime import write_private_file

    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"new"


def _serialized_key_sizes(model, row: np.ndarray) -> tuple[int, int, int]:
    """(evaluation keys, secret keys, one input ciphertext) as they are really serialized."""
    client = model.fhe_model_.client()
    client.keygen()
    evaluation = len(client._client.evaluation_keys.serialize())
    everything = len(client._client.keys.serialize())
    return evaluation, everything - evaluation, len(client.encrypt(row)[0])


HEADER = 4096  # serialization headers and the envelope: a few hundred bytes measured


@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "uncompressed"])
def test_report_key_and_ciphertext_sizes_are_the_real_ones(compiled_cancer_tree, cancer, test_config, compressed):
    """The report's key sizes equal the serialized keys (concrete's own statistic over-counts bootstrap keys 3-5x)."""
    from dataclasses import replace

    model = compiled_cancer_tree
    if not compressed:  # a smaller tree: uncompressed keys of the depth-5 tree are 171 MiB
        X_train, _, y_train, _ = cancer
        config = replace(test_config, compress_evaluation_keys=False)  # inputs: veilml's seeded ones, as by default
        model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X_train, y_train).compile(X_train, config)
    report = model.report_
    evaluation, secret, ciphertext = _serialized_key_sizes(model, cancer[0][:1])
    expected = report.compressed_evaluation_key_bytes if compressed else report.evaluation_key_bytes
    assert expected <= evaluation <= expected + HEADER, (expected, evaluation)
    assert report.secret_key_bytes <= secret <= report.secret_key_bytes + HEADER, (report.secret_key_bytes, secret)
    assert report.input_bytes <= ciphertext <= report.input_bytes + HEADER, (report.input_bytes, ciphertext)
    # compression keeps one of (k + 1) polynomials of the bootstrap key: several times smaller
    assert report.evaluation_key_bytes > 4 * report.compressed_evaluation_key_bytes
    d = report.to_dict()
    assert d["evaluation_key_bytes"] == report.bootstrap_key_bytes + report.keyswitch_key_bytes
    assert sum(report.pbs_by_precision.values()) == report.pbs_count
    assert f"{report.evaluation_key_bytes / 2**20:.1f} MiB" in str(report)


# ------------------------------------------------------------------------------------ private files
def test_private_files_refuse_symlinks(compiled_cancer_tree, tmp_path):
    from veilml.runtime import write_private_file

    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    target.chmod(0o600)
    link = tmp_path / "client.keys"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="symbolic link"):
        write_private_file(link, b"secret")
    client = compiled_cancer_tree.fhe_model_.client()
    client.keygen()
    with pytest.raises(PermissionError, match="symbolic link"):
        client.save_keys(link)
    with pytest.raises(PermissionError, match="symbolic link"):
        client.load_keys(link)
    assert target.read_bytes() == b"untouched" and link.is_symlink()
    # no temporary file is left behind, and a normal write leaves exactly the file
    path = write_private_file(tmp_path / "d" / "k", b"x" * 1000)
    assert os.listdir(tmp_path / "d") == ["k"] and path.read_bytes() == b"x" * 1000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------ envelopes
FP, KID = "ab" * 32, "cd" * 32


def test_envelope_round_trip_and_malformed_envelopes():
    data = pack_envelope("ciphertext", b"payload", fingerprint=FP, key_id=KID)
    envelope = unpack_envelope(data, "ciphertext")
    assert (envelope.kind, envelope.fingerprint, envelope.key_id, envelope.payload) == ("ciphertext", FP, KID, b"payload")
    with pytest.raises(EnvelopeError, match="expected evaluation keys, got an envelope of kind 'ciphertext'.*swapped"):
        unpack_envelope(data, "evaluation-keys")
    with pytest.raises(EnvelopeError, match="not a veilml envelope.*not concrete's raw serialization"):
        unpack_envelope(b"\x00" * 64, "ciphertext")
    with pytest.raises(EnvelopeError, match="announces a payload of 7 bytes and carries 6"):
        unpack_envelope(data[:-1], "ciphertext")
    with pytest.raises(EnvelopeError, match="truncated"):
        unpack_envelope(data[:20], "ciphertext")
    with pytest.raises(EnvelopeError, match="limit of 10 bytes"):
        unpack_envelope(data, "ciphertext", max_bytes=10)
    bad_version = data[:8] + b"\x00\x02" + data[10:]
    with pytest.raises(EnvelopeError, match="version 2 is not supported"):
        unpack_envelope(bad_version, "ciphertext")
    huge_header = data[:10] + (60000).to_bytes(2, "big") + data[12:]
    with pytest.raises(EnvelopeError, match="header of 60000 bytes, the limit is 1024"):
        unpack_envelope(huge_header, "ciphertext")
    forged = data.replace(b'"key_id"', b'"key_ix"')
    with pytest.raises(EnvelopeError, match="must have the fields"):
        unpack_envelope(forged, "ciphertext")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        pack_envelope("result", b"", fingerprint="x", key_id=KID)


def test_structure_template_is_learned_per_word_and_round_trips():
    rng = np.random.default_rng(0)

    def sample():  # a 40-byte constant header, 10,000 random bytes, a 16-byte constant trailer
        return b"H" * 40 + rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes() + b"T" * 16

    samples = [sample(), sample()]
    template = learn_template(samples)
    # byte-level agreement between two random samples (~1/256 of positions) is not mistaken for structure
    assert template.length == 10_056 and template.constant_bytes == 56
    assert [(offset, len(value)) for offset, value in template.runs] == [(0, 40), (10_040, 16)]
    for _ in range(3):
        template.check(sample())  # fresh samples pass
    flipped = bytearray(sample())
    flipped[37] ^= 1
    with pytest.raises(LayoutError, match="this ciphertext is not one of this circuit's inputs: byte 37 differs.*fix it"):
        template.check(bytes(flipped), "this ciphertext is not one of this circuit's inputs", "fix it")
    with pytest.raises(LayoutError, match="10,055 bytes, the circuit's layout has 10,056"):
        template.check(sample()[:-1])
    assert StructureTemplate.from_bytes(template.to_bytes()) == template
    with pytest.raises(LayoutError, match="truncated|do not add up"):
        StructureTemplate.from_bytes(template.to_bytes()[:-1])
    exact = learn_template([samples[0], samples[0]])  # data without randomness: all of it is fixed
    assert exact.constant_bytes == exact.length == len(samples[0])
    with pytest.raises(LayoutError, match="byte 40 differs"):
        exact.check(samples[1])
    with pytest.raises(LayoutError, match="different lengths"):
        learn_template([samples[0], samples[1][:-8]])
    layout = CircuitLayout(template, (template,))
    assert CircuitLayout.from_bytes(layout.to_bytes()) == layout


# ------------------------------------------------------------------------------------ hostile inputs
@pytest.fixture(scope="module")
def other_tree(cancer, test_config):
    """A second, different small model: its keys and ciphertexts must not be taken for the first one's."""
    from veilml import DecisionTreeClassifier

    X_train, _, y_train, _ = cancer
    model = DecisionTreeClassifier(max_depth=2, n_bits=3, random_state=0).fit(X_train[:, :5], y_train)
    return model.compile(X_train[:, :5], test_config)


def _repack(envelope, payload=None, **fields):
    values = {"fingerprint": envelope.fingerprint, "key_id": envelope.key_id, **fields}
    return pack_envelope(envelope.kind, envelope.payload if payload is None else payload, **values)


@pytest.mark.execute
def test_another_models_keys_are_refused_before_concrete(compiled_cancer_tree, other_tree, cancer, no_clip_warning):
    model = compiled_cancer_tree.fhe_model_
    client, server = model.client(), model.server()
    from concrete import fhe

    assert server.layout is not None  # learned before native code is switched off below
    (ciphertext,) = client.encrypt(cancer[1][:1])
    foreign_keys = other_tree.fhe_model_.client().evaluation_keys()
    (foreign_ciphertext,) = other_tree.fhe_model_.client().encrypt(cancer[1][:1, :5])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fhe.Value, "deserialize", staticmethod(_boom))
        patch.setattr(fhe.EvaluationKeys, "deserialize", staticmethod(_boom))
        with pytest.raises(
            KeyMismatchError,
            match=r"evaluation keys were made for another model \(fingerprint .*"
            r"this server runs .*generate keys with this model's client",
        ):
            server.run(ciphertext, foreign_keys)
        with pytest.raises(KeyMismatchError, match="ciphertext was encrypted for another model"):
            server.run(foreign_ciphertext, client.evaluation_keys())
        # relabelled as this model's keys (headers are not authenticated): the layout check refuses them
        keys = unpack_envelope(foreign_keys, "evaluation-keys")
        relabelled = _repack(keys, fingerprint=server.fingerprint)
        value = unpack_envelope(ciphertext, "ciphertext")
        with pytest.raises(LayoutError, match="evaluation keys do not have this circuit's layout"):
            server.run(_repack(value, key_id=keys.key_id), relabelled)
    assert specs_fingerprint(other_tree.fhe_model_.compiled.circuit.client.specs) != server.fingerprint


def _boom(*args, **kwargs):
    raise AssertionError("bytes reached concrete's native code")


@pytest.mark.execute
def test_another_clients_keys_and_results_are_refused(compiled_cancer_tree, cancer, no_clip_warning):
    model = compiled_cancer_tree.fhe_model_
    client, server = model.client(), model.server()
    other = FHEClient(model.compiled.circuit.client.specs, model.codec)  # no key cache: new keys
    X = cancer[1][:1]
    (mine,) = client.encrypt(X)
    (theirs,) = other.encrypt(X)
    assert other.key_id != client.key_id and other.fingerprint == client.fingerprint
    with pytest.raises(
        KeyMismatchError,
        match="encrypted under other keys .* than the evaluation keys given.*"
        "send the evaluation keys of the client that encrypted it",
    ):
        server.run(mine, other.evaluation_keys())
    their_result = server.run(theirs, other.evaluation_keys())  # a legitimate run for the other client
    assert np.array_equal(other.decrypt([their_result]), model.run(X, "disable"))
    from concrete import fhe

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fhe.Value, "deserialize", staticmethod(_boom))
        with pytest.raises(KeyMismatchError, match="computed under other evaluation keys.*refused without decrypting"):
            client.decrypt([their_result])
        result = unpack_envelope(their_result, "result")
        with pytest.raises(ModelMismatchError, match="computed by another model"):
            client.decrypt_integers(_repack(result, fingerprint="0" * 64))
        with pytest.raises(EnvelopeError, match="expected result"):
            client.decrypt_integers(mine)


@pytest.mark.execute
def test_tampered_ciphertexts_and_keys_are_refused_before_concrete(compiled_cancer_tree, cancer, no_clip_warning):
    model = compiled_cancer_tree.fhe_model_
    client, server = model.client(), model.server()
    layout = server.layout
    keys = client.evaluation_keys()
    (ciphertext,) = client.encrypt(cancer[1][:1])
    value, key_envelope = unpack_envelope(ciphertext, "ciphertext"), unpack_envelope(keys, "evaluation-keys")
    from concrete import fhe

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fhe.Value, "deserialize", staticmethod(_boom))
        patch.setattr(fhe.EvaluationKeys, "deserialize", staticmethod(_boom))
        # the envelope header
        with pytest.raises(EnvelopeError, match="announces a payload"):
            server.run(ciphertext[:-100], keys)  # truncated
        with pytest.raises(EnvelopeError, match="kind"):
            server.run(ciphertext.replace(b'"kind":"ciphertext"', b'"kind":"cipherteXt"'), keys)
        with pytest.raises(EnvelopeError, match="not a veilml envelope"):
            server.run(value.payload, keys)  # concrete's raw bytes
        with pytest.raises(EnvelopeError, match="expected evaluation keys.*swapped"):
            server.run(keys, ciphertext)
        # the seeded payload, behind a consistent header (runtime/seeded_inputs.py)
        with pytest.raises(SeededInputError, match="is 15,160 bytes, got 15,152"):
            server.run(_repack(value, value.payload[:-8]), keys)
        with pytest.raises(SeededInputError, match="bad magic"):
            server.run(_repack(value, b"X" + value.payload[1:]), keys)
        # keys that do not hash to their id, and keys with a flipped structural byte (new id, not cached)
        with pytest.raises(KeyMismatchError, match="do not hash to their key id.*modified or corrupted"):
            server.run(ciphertext, _repack(key_envelope, key_envelope.payload[:-1] + b"\x00"))
        bad = bytearray(key_envelope.payload)
        bad[layout.evaluation_keys.runs[0][0] + 5] ^= 0x01
        bad_id = key_id(bytes(bad))
        with pytest.raises(LayoutError, match="evaluation keys do not have this circuit's layout: byte 5 differs"):
            server.run(_repack(value, key_id=bad_id), _repack(key_envelope, bytes(bad), key_id=bad_id))
    assert len(value.payload) == 40 + 8 * 1890 and len(key_envelope.payload) == layout.evaluation_keys.length


@pytest.mark.execute
def test_layout_learning_keeps_no_key_and_caches_keys_per_key_set(compiled_cancer_tree, monkeypatch):
    from concrete import fhe

    fhe_model = compiled_cancer_tree.fhe_model_
    compiled = fhe_model.compiled
    specs = compiled.circuit.client.specs

    def alive():
        gc.collect()
        return sum(type(obj) in (fhe.Client, fhe.Keys) for obj in gc.get_objects())

    before = alive()
    server = FHEServer(compiled.circuit.server, specs, key_cache_size=2)
    layout = server.layout  # two throw-away key generations
    assert alive() == before  # the throw-away clients and keys are gone, not merely unreachable from the server
    assert not _holds_secret(server) and not _holds_secret(layout)
    # the layout is public data: cached as bytes, it gives the same checks
    again = FHEServer(compiled.circuit.server, specs.serialize(), layout=layout.to_bytes())
    assert again.layout == layout and again.fingerprint == server.fingerprint
    # deserialized keys are kept per key id, at most key_cache_size of them, least recently used out first
    payload = unpack_envelope(fhe_model.client().evaluation_keys(), "evaluation-keys").payload
    made = []
    monkeypatch.setattr(fhe.EvaluationKeys, "deserialize", staticmethod(lambda data: made.append(object()) or made[-1]))
    first, second, third = ("1" * 64, "2" * 64, "3" * 64)
    a = server._evaluation_keys(payload, first)
    b = server._evaluation_keys(payload, second)
    assert server._evaluation_keys(payload, first) is a and len(made) == 2  # a hit deserializes nothing
    server._evaluation_keys(payload, third)  # evicts the least recently used: the second
    assert list(server._keys) == [first, third] and server._evaluation_keys(payload, second) is not b
    assert len(made) == 4
