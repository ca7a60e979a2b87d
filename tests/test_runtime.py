"""Client / server separation, key handling."""

import stat

import numpy as np
import pytest

from veilml.runtime import FHEClient, FHEServer


def _holds_secret(obj, seen=None) -> bool:
    """Whether ``obj`` reaches, through attributes and containers, a concrete Client or Keys."""
    from concrete import fhe

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, (fhe.Client, fhe.Keys, FHEClient)):
        return True
    if isinstance(obj, dict):
        return any(_holds_secret(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
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
    assert isinstance(server, FHEServer) and not _holds_secret(server)
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
    other = FHEClient(model.fhe_model_.compiled.circuit.client.specs, model.fhe_model_.encode, model.fhe_model_.decode)
    other.load_keys(path)
    result = model.fhe_model_.server().run(ciphertext, other.evaluation_keys())
    assert np.array_equal(other.decrypt([result]), model.decision_scores(X))
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        other.load_keys(path)


def test_save_keys_refuses_without_keys(compiled_cancer_tree, tmp_path):
    fresh = FHEClient(compiled_cancer_tree.fhe_model_.compiled.circuit.client.specs, lambda x: x, lambda x: x)
    with pytest.raises(ValueError, match="call keygen"):
        fresh.save_keys(tmp_path / "k")


def test_write_private_file_tightens_existing_file(tmp_path):
    from veilml.runtime import write_private_file

    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"new"


def test_report_figures(compiled_cancer_tree):
    report = compiled_cancer_tree.report_
    d = report.to_dict()
    assert d["evaluation_key_bytes"] == report.bootstrap_key_bytes + report.keyswitch_key_bytes > 0
    assert sum(report.pbs_by_precision.values()) == report.pbs_count
    assert "PBS: " in str(report)
