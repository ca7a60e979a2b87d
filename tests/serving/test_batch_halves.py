"""The batched path's two halves: what the server checks of a request, what the client checks of a description."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from veilml.models.trees.batch import batch_server
from veilml.models.trees.estimators import DecisionTreeClassifier
from veilml.runtime.batch.halves import BatchModelClient, BatchModelServer, ciphertext_bytes
from veilml.runtime.batch.plan import DescriptionError
from veilml.runtime.batch.program import ProgramBuilder, SlotProgram
from veilml.runtime.envelope import pack_batch, unpack_batch
from veilml.runtime.seal_bytes import seal_files

pytest.importorskip("tenseal")

X, Y = load_breast_cancer(return_X_y=True)
X3 = X[:, :3]


@pytest.fixture(scope="module")
def halves():
    """The server half as a bundle stores it (JSON) and a client half checked against the model's codec."""
    est = DecisionTreeClassifier(n_bits=6, max_depth=3, random_state=0).fit(X3, Y)
    server = BatchModelServer.from_json(batch_server(est).to_json())
    client = BatchModelClient(est.fhe_model_.codec, json.loads(json.dumps(server.description.to_dict())))
    return est, server, client


def test_a_round_trip_through_bytes_equals_disable_and_sends_no_secret_key(halves):
    est, server, client = halves
    bodies: list[bytes] = []

    def transport(requests):
        for request in requests:
            bodies.append(request.pack())
            yield server.answer_bytes(bodies[-1], 2**31)

    for encoding in ("thermometer", "digits"):
        scores = client.score(X3, transport, encoding=encoding, progress=False)
        np.testing.assert_array_equal(est.fhe_model_.codec.scores(scores), est.decision_scores(X3, "disable"))
        secret = seal_files().save(client.last_session.client._secret)
        windows = [secret[i : i + 256] for i in range(1024, len(secret) - 256, len(secret) // 8)]
        assert len(windows) >= 4 and not any(window in body for window in windows for body in bodies)


def _request(client, rows=40, encoding="thermometer"):
    session = client.session(client.plan(rows, encoding))
    return session.request(client.codec.input_quantizer.quantize(X3[:rows], warn=False))


def test_the_server_refuses_malformed_requests(halves):
    _, server, client = halves
    good = _request(client)
    params = server.description.shapes[good.encoding].params
    cases = [
        (dataclasses.replace(good, inputs=good.inputs[:-1]), "program reads 189 ciphertexts, the request has 188"),
        (dataclasses.replace(good, rows=params.slots + 1), "a batch holds 1 to 8192 rows"),
        (dataclasses.replace(good, rows=0), "a batch holds 1 to 8192 rows"),
        (
            dataclasses.replace(good, inputs=[good.inputs[0] + b"\0" * ciphertext_bytes(params)] + good.inputs[1:]),
            "larger than a fresh",
        ),
        (dataclasses.replace(good, relin_keys=good.relin_keys * 2), "keys are larger"),
        (dataclasses.replace(good, inputs=[b"\0" * 500] * len(good.inputs)), "not a batched upload of these parameters"),
    ]
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            server.answer_bytes(request.pack(), 2**31)
    only_digits = BatchModelServer({"digits": server.programs["digits"]}, 6, 3, server.description.combine)
    with pytest.raises(ValueError, match="no thermometer program"):
        only_digits.answer(good)
    header = json.dumps({"format": "veilml-batch-request/1", "encoding": "thermometer", "rows": 40, "inputs": 5}).encode()
    with pytest.raises(ValueError, match="does not describe its parts"):
        server.answer_bytes(pack_batch([header, good.relin_keys, good.public_key, *good.inputs]), 2**31)
    with pytest.raises(ValueError, match="more than"):
        server.answer_bytes(good.pack(), 2**20)  # over the byte limit: refused before it is parsed
    assert len(unpack_batch(server.answer_bytes(good.pack(), 2**31), max_items=8)) == 1  # the genuine one is answered


def _edited(server, edit):
    description = copy.deepcopy(server.description.to_dict())
    edit(description)
    return description


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["programs"][0]["params"].update(poly_degree=4096),
            r"client derives .* \(a client chooses its own parameters\)",
        ),
        (lambda d: d["programs"][0]["params"].update(coeff_bits=[30, 30, 30]), "client derives"),
        (lambda d: d["programs"][0].update(depth=99), "depth maps to no parameters"),
        (lambda d: d["programs"][0].update(n_inputs=3), "reads 3 inputs, and the client encrypts 189"),
        (lambda d: d.update(n_bits=4), "at 4 bits, and the client's quantizer of 3 features at 6 bits"),
        (lambda d: d.update(combine=[[1]] * 5000), "at most 4096 rows"),
        (lambda d: d["programs"][0].update(encoding="plaintext"), "unknown encoding 'plaintext'"),
        (lambda d: d.update(format="other"), "not a batched model's description"),
    ],
)
def test_the_client_refuses_a_hostile_description_before_making_a_key(halves, monkeypatch, edit, message):
    from veilml.runtime.batch import seal_bfv

    est, server, _ = halves

    def no_key(*args, **kwargs):
        raise AssertionError("a key was made from a refused description")

    monkeypatch.setattr(seal_bfv.BatchClient, "__init__", no_key)
    with pytest.raises(DescriptionError, match=message):
        client = BatchModelClient(est.fhe_model_.codec, _edited(server, edit))
        client.score(X3, lambda requests: iter(()), progress=False)


def test_slot_programs_round_trip_and_refuse_forward_references():
    builder = ProgramBuilder(3)
    a, b, c = (builder.input(i) for i in range(3))
    program = builder.build([builder.multiply(a, builder.multiply(b, c)).scaled(3) + a])
    again = SlotProgram.from_dict(json.loads(json.dumps(program.to_dict())))
    assert again == program and again.depth == 2
    data = program.to_dict()
    data["products"][0][0] = [0, [[4, 1]]]  # refers to the second product, not made yet
    with pytest.raises(ValueError, match="not computed before it"):
        SlotProgram.from_dict(data)
    data = program.to_dict()
    data["outputs"][0][1][0][1] = True
    with pytest.raises(ValueError, match="not an integer"):
        SlotProgram.from_dict(data)


def test_the_client_keeps_each_request_within_the_servers_limit(halves):
    """The thermometer's request is the larger: under a limit only the digits fit, under a smaller one neither."""
    from veilml.runtime.batch.halves import request_bytes

    _, server, client = halves
    shapes = server.description.shapes
    thermometer, digits = request_bytes(shapes["thermometer"]), request_bytes(shapes["digits"])
    assert digits < thermometer
    assert client.plan(100, max_request_bytes=thermometer - 1).encoding == "digits"
    with pytest.raises(ValueError, match="over the server's limit .* --max-payload-mb"):
        client.plan(100, max_request_bytes=digits - 1)


def test_remote_model_refuses_a_hostile_description_before_sending_a_byte(compiled_cancer_tree, cancer, tmp_path):
    """A server whose ``GET /batch`` states parameters the client does not derive: refused, nothing posted."""
    from test_client_trust import _json, genuine_routes, serving

    from veilml.serving.batch_bundle import batch_description
    from veilml.serving.remote_model import RemoteModel, RemoteModelError

    bundle = compiled_cancer_tree.save(tmp_path / "bundle")
    description = batch_description(bundle)
    for program in description["programs"]:
        program["params"] = {"poly_degree": 1024, "coeff_bits": [27], "plain_modulus": 65537}  # toy parameters
    routes = genuine_routes(bundle, batch=True, max_payload_bytes=2**30)
    routes["GET", "/batch"] = _json(description)
    with serving(routes) as (url, sent):
        with RemoteModel(url, bundle_dir=tmp_path / "client", retries=0) as model:
            with pytest.raises(RemoteModelError, match="refuses: .* client derives .* may be hostile"):
                model.predict(cancer[1][:130])  # 130 rows: the batched path
        assert set(sent) == {"/bundle/client", "/health", "/batch"}  # no key, no ciphertext
