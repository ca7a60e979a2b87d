"""The client refuses concrete client specs whose crypto parameters are below 128-bit security."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from veilml.runtime.security import (
    InsecureParametersError,
    check_client_specs,
    check_lwe,
    meets_security,
    required_stddev_log2,
)

SLOPE_128, BIAS_128 = -0.025696778711484593, 2.675931372549016


@pytest.fixture(scope="module")
def matmul_specs() -> bytes:
    from veilml.linear.concrete import ConcreteServer

    return ConcreteServer(np.random.default_rng(0).integers(-127, 128, size=(8, 6)), 8).setup()


def _tlu_specs(**config) -> bytes:
    from concrete import fhe

    @fhe.compiler({"x": "encrypted"})
    def f(x):
        return fhe.univariate(lambda v: v % 3)(x) + x

    return f.compile(range(16), **config).client.specs.serialize()


@pytest.fixture(scope="module")
def tlu_specs() -> bytes:
    return _tlu_specs()


def _edit(specs: bytes, change) -> bytes:
    d = json.loads(specs)
    change(d)
    return json.dumps(d).encode()


def _refused(specs, *fragments: str, bits: int = 128) -> str:
    with pytest.raises(InsecureParametersError) as info:
        check_client_specs(specs, bits)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "refuse this server" in message
    return message


def _input_enc(d, gate: int = 0) -> dict:
    return d["circuits"][0]["inputs"][gate]["typeInfo"]["lweCiphertext"]["encryption"]


# --- the curve -----------------------------------------------------------------------------------


def test_curve_figures():
    assert required_stddev_log2(1280) == pytest.approx(SLOPE_128 * 1280 + BIAS_128)
    assert required_stddev_log2(449) == math.inf  # below concrete's minimal dimension
    assert required_stddev_log2(1 << 16) == -62.0  # noise floor: above the 2 lowest bits of 2^64
    assert required_stddev_log2(1280, 132) > required_stddev_log2(1280, 128)
    assert required_stddev_log2(1280, 100) == required_stddev_log2(1280, 128)  # conservative
    with pytest.raises(ValueError):
        required_stddev_log2(1280, 256)


@pytest.mark.parametrize("n", [450, 822, 1280, 2048, 4096])
@pytest.mark.parametrize("bits", [128, 132])
def test_exactly_at_the_curve_passes_just_below_fails(n, bits):
    at = required_stddev_log2(n, bits)
    assert meets_security(n, at, bits)
    assert not meets_security(n, at - 1e-6, bits)
    variance = 2.0 ** (2 * at)  # how concrete writes the variance into its specs
    check_lwe(n, variance, "x", bits)
    with pytest.raises(InsecureParametersError, match=f"{bits}-bit security curve"):
        check_lwe(n, variance * (1 - 1e-6), "x", bits)


def test_check_lwe_messages():
    with pytest.raises(InsecureParametersError, match=r"dimension 16 with noise stddev 2\^-inf.*at least 450"):
        check_lwe(16, 0.0, "the test ciphertext")
    with pytest.raises(InsecureParametersError, match="not a finite non-negative"):
        check_lwe(1280, float("nan"), "the test ciphertext")
    with pytest.raises(InsecureParametersError, match="not a finite non-negative"):
        check_lwe(1280, -1e-19, "the test ciphertext")
    check_lwe(1280, 1e-3, "very noisy but secure")


# --- real specs pass -----------------------------------------------------------------------------


def test_real_matmul_specs_pass(matmul_specs):
    d = json.loads(matmul_specs)
    assert d["keyset"]["lweBootstrapKeys"] == [] and _input_enc(d)["lweDimension"] >= 450
    check_client_specs(matmul_specs)
    check_client_specs(matmul_specs.decode())
    # concrete's default 128-bit parameters sit on the 128-bit curve, so they are below 132 bits
    _refused(matmul_specs, "132-bit security curve", "below the 132 bits", bits=132)


def test_real_tlu_specs_pass(tlu_specs):
    d = json.loads(tlu_specs)
    assert d["keyset"]["lweBootstrapKeys"] and d["keyset"]["lweKeyswitchKeys"]
    check_client_specs(tlu_specs)
    from concrete import fhe

    check_client_specs(fhe.ClientSpecs.deserialize(tlu_specs))  # a ClientSpecs object, via .serialize()


def test_real_132_bit_specs_pass_at_132():
    from concrete.fhe.compilation.configuration import SecurityLevel

    specs = _tlu_specs(security_level=SecurityLevel.SECURITY_132_BITS)
    assert json.loads(specs)["keyset"]["lweBootstrapKeys"]
    check_client_specs(specs, 132)
    check_client_specs(specs, 128)


def test_real_tree_specs_pass(compiled_cancer_tree):
    specs = compiled_cancer_tree.fhe_model_.compiled.circuit.client.specs.serialize()
    assert json.loads(specs)["keyset"]["lweBootstrapKeys"]
    check_client_specs(specs)


# --- tampered specs are refused ------------------------------------------------------------------


def test_toy_dimension_refused(matmul_specs):
    def shrink(d):
        d["keyset"]["lweSecretKeys"][0]["params"]["lweDimension"] = 16
        for side in ("inputs", "outputs"):
            for gate in d["circuits"][0][side]:
                gate["typeInfo"]["lweCiphertext"]["encryption"]["lweDimension"] = 16

    _refused(_edit(matmul_specs, shrink), "dimension 16", "at least 450", "128-bit security curve", "below the 128 bits")


def test_zero_variance_refused(matmul_specs):
    def zero(d):
        _input_enc(d)["variance"] = 0

    _refused(_edit(matmul_specs, zero), "input 0", "noise stddev 2^-inf", "at least 2^-30.2")


def test_zero_variance_on_output_refused(matmul_specs):
    def zero(d):
        d["circuits"][0]["outputs"][0]["typeInfo"]["lweCiphertext"]["encryption"]["variance"] = 0.0

    _refused(_edit(matmul_specs, zero), "output 0", "2^-inf")


def test_variance_just_below_curve_refused(matmul_specs):
    n = _input_enc(json.loads(matmul_specs))["lweDimension"]
    at = 2.0 ** (2 * required_stddev_log2(n))

    def at_curve(d):
        _input_enc(d)["variance"] = at

    def below(d):
        _input_enc(d)["variance"] = at * 0.999

    check_client_specs(_edit(matmul_specs, at_curve))
    _refused(_edit(matmul_specs, below), f"dimension {n}", "128-bit security curve")


def test_bootstrap_key_zero_variance_refused(tlu_specs):
    def zero(d):
        d["keyset"]["lweBootstrapKeys"][0]["params"]["variance"] = 0

    _refused(_edit(tlu_specs, zero), "bootstrap key", "2^-inf")


def test_keyswitch_key_zero_variance_refused(tlu_specs):
    def zero(d):
        d["keyset"]["lweKeyswitchKeys"][0]["params"]["variance"] = 0

    _refused(_edit(tlu_specs, zero), "keyswitch key", "2^-inf")


def test_shrunk_bootstrap_glwe_refused(tlu_specs):
    def shrink_params(d):  # params alone: no longer the output key's dimension
        d["keyset"]["lweBootstrapKeys"][0]["params"]["polynomialSize"] = 16

    _refused(_edit(tlu_specs, shrink_params), "inconsistent", "lweBootstrapKeys[0]", "dimension")

    def shrink_all(d):  # GLWE key and everything that names it shrunk together
        ks = d["keyset"]
        bsk = ks["lweBootstrapKeys"][0]
        bsk["params"]["glweDimension"], bsk["params"]["polynomialSize"] = 1, 16
        ks["lweSecretKeys"][bsk["outputId"]]["params"]["lweDimension"] = 16
        ks["lweKeyswitchKeys"][0]["params"]["inputLweDimension"] = 16
        for side in ("inputs", "outputs"):
            for gate in d["circuits"][0][side]:
                gate["typeInfo"]["lweCiphertext"]["encryption"]["lweDimension"] = 16

    _refused(_edit(tlu_specs, shrink_all), "bootstrap key", "dimension 16", "at least 450")


def test_shrunk_keyswitch_output_key_refused(tlu_specs):
    def shrink(d):
        ks = d["keyset"]
        ksk = ks["lweKeyswitchKeys"][0]
        ks["lweSecretKeys"][ksk["outputId"]]["params"]["lweDimension"] = 64
        ksk["params"]["outputLweDimension"] = 64
        ks["lweBootstrapKeys"][0]["params"]["inputLweDimension"] = 64

    _refused(_edit(tlu_specs, shrink), "keyswitch key", "dimension 64", "at least 450")


def test_packing_keyswitch_keys_checked(tlu_specs):
    base = json.loads(tlu_specs)
    bsk = base["keyset"]["lweBootstrapKeys"][0]
    pksk = {
        "id": 0,
        "inputId": bsk["inputId"],
        "outputId": bsk["outputId"],
        "params": {
            **{k: bsk["params"][k] for k in ("levelCount", "baseLog", "glweDimension", "polynomialSize", "variance")},
            **{k: bsk["params"][k] for k in ("integerPrecision", "modulus", "keyType", "inputLweDimension")},
            "innerLweDimension": bsk["params"]["inputLweDimension"],
        },
        "compression": "none",
    }

    def add(variance):
        def change(d):
            d["keyset"]["packingKeyswitchKeys"] = [copy.deepcopy(pksk)]
            d["keyset"]["packingKeyswitchKeys"][0]["params"]["variance"] = variance

        return change

    check_client_specs(_edit(tlu_specs, add(bsk["params"]["variance"])))
    _refused(_edit(tlu_specs, add(0)), "packing keyswitch key", "2^-inf")


def test_unknown_key_id_refused(matmul_specs):
    def point_away(d):
        _input_enc(d)["keyId"] = 7

    _refused(_edit(matmul_specs, point_away), "names secret key 7", "does not define")


def test_unknown_key_id_in_evaluation_key_refused(tlu_specs):
    def point_away(d):
        d["keyset"]["lweKeyswitchKeys"][0]["outputId"] = 9

    _refused(_edit(tlu_specs, point_away), "names secret key 9")


def test_dimension_mismatch_refused(matmul_specs):
    def key_only(d):  # the key shrunk, the encryption still claims 1280
        d["keyset"]["lweSecretKeys"][0]["params"]["lweDimension"] = 16

    _refused(_edit(matmul_specs, key_only), "inconsistent", "claims dimension 1280", "whose dimension is 16")

    def encryption_only(d):
        _input_enc(d)["lweDimension"] = 2048

    _refused(_edit(matmul_specs, encryption_only), "claims dimension 2048", "whose dimension is 1280")


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[]", "should be a JSON object"),
        (b'{"circuits": []}', "lacks keyset"),
    ],
)
def test_garbage_refused(data, fragment):
    _refused(data, "cannot assess", fragment)


def test_missing_keyset_refused(matmul_specs):
    _refused(_edit(matmul_specs, lambda d: d.pop("keyset")), "lacks keyset")


def test_missing_field_refused(matmul_specs):
    _refused(_edit(matmul_specs, lambda d: _input_enc(d).pop("variance")), "lacks variance")


@pytest.mark.parametrize("key_type", ["ternary", "gaussian", None])
def test_non_binary_key_refused(matmul_specs, key_type):
    def change(d):
        d["keyset"]["lweSecretKeys"][0]["params"]["keyType"] = key_type

    _refused(_edit(matmul_specs, change), "keyType", "only binary keys")


def test_non_native_modulus_refused(matmul_specs):
    def change(d):
        _input_enc(d)["modulus"] = {"modulus": {"powerOfTwo": {"power": 32}}}

    _refused(_edit(matmul_specs, change), "native 2^64 modulus")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-1e-19", '"6e-19"', "true"])
def test_bad_variance_numbers_refused(matmul_specs, bad):
    text = json.dumps(json.loads(matmul_specs))
    variance = json.dumps(_input_enc(json.loads(matmul_specs))["variance"])
    tampered = text.replace(f'"variance": {variance}', f'"variance": {bad}', 1)
    assert tampered != text
    _refused(tampered, "cannot assess")


def test_out_of_range_and_duplicate_fields_refused(matmul_specs):
    def wrap(d):  # a uint32 reader could wrap 2^32 + 16 to 16
        d["keyset"]["lweSecretKeys"][0]["params"]["lweDimension"] = 2**32 + 16

    _refused(_edit(matmul_specs, wrap), "integer in")
    text = matmul_specs.decode()
    duplicated = text.replace('"lweDimension": 1280', '"lweDimension": 1280, "lweDimension": 16', 1)
    assert duplicated != text
    _refused(duplicated, "repeats a key")


def test_unknown_structure_refused(matmul_specs):
    def extra_key_field(d):
        d["keyset"]["lweSecretKeys"][0]["params"]["publicKey"] = True

    _refused(_edit(matmul_specs, extra_key_field), "unknown field(s) publicKey")

    def unknown_gate(d):
        d["circuits"][0]["inputs"][0]["typeInfo"] = {"glweCiphertext": {}}

    _refused(_edit(matmul_specs, unknown_gate), "unknown kind 'glweCiphertext'")

    def tfhers(d):
        d["tfhers_specs"]["input_types_per_func"] = {"f": [{"params": {}}]}

    _refused(_edit(matmul_specs, tfhers), "TFHE-rs")


def test_wrong_python_type():
    with pytest.raises(TypeError):
        check_client_specs(12345)
