"""Client-side check that a server's concrete crypto parameters reach a given security level.

A client that generates keys from client specs sent by a server trusts whatever parameters they
contain: a hostile server can shrink the LWE dimension or zero the noise, and then decrypt
everything the client encrypts. :func:`check_client_specs` reads the specs as plain JSON (no
concrete import) before keygen and refuses them unless every encryption under a secret key that
they describe (ciphertexts, bootstrap keys, keyswitch keys, packing keyswitch keys) lies on the
secure side of concrete's own security curve, that every circuit input and output is an LWE
ciphertext (a plaintext gate would make the client send its data in the clear), and that no key
or value is larger than concrete's own parameter search produces (a hostile size makes key
generation or encryption exhaust memory). Anything it cannot assess is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "MAX_GLWE_DIMENSION",
    "MAX_KEY_BYTES",
    "MAX_LWE_DIMENSION",
    "MAX_POLYNOMIAL_SIZE",
    "MAX_VALUE_BYTES",
    "InsecureParametersError",
    "LweGate",
    "SpecsSummary",
    "check_client_specs",
    "check_lwe",
    "encrypted_gates",
    "meets_security",
    "required_stddev_log2",
]

MODULUS_LOG2 = 64


@dataclass(frozen=True)
class _Curve:
    slope: float
    bias: float
    min_dimension: int


# Concrete's security curves for binary secret keys and q = 2^64: a (dimension n, noise stddev s
# relative to the torus) pair gives the level's security when n >= min_dimension and
# log2(s) >= max(slope * n + bias, 2 - 64), the second term keeping the noise above the two lowest
# bits of the 64-bit modulus. Source: zama-ai/concrete,
# tools/parameter-curves/concrete-security-curves-rust/src/gaussian/curves_gen.rs and
# security_weights.rs (the optimizer's curves), identical to concrete-security-curves-cpp's
# curves.gen.h; 128 bits since commit eba61f20c (June 2024), 132 bits since 4d6afba9d (Dec 2024).
# The same four doubles are in the libConcretelangRuntime shipped with concrete-python 2.11.0.
_CURVES: dict[int, _Curve] = {
    128: _Curve(slope=-0.025696778711484593, bias=2.675931372549016, min_dimension=450),
    132: _Curve(slope=-0.024891456582633045, bias=2.65734593837534, min_dimension=450),
}

# concrete writes variance = 2^(2 * curve(n)) as a double; allow for that rounding, no more.
_ROUNDING_BITS = 1e-9

_REFUSE = "refuse this server: it may be trying to read your data"
_REFUSE_SIZE = "refuse this server: it may be hostile, trying to exhaust this machine's memory"
_UINT32_MAX = 2**32 - 1
WORD = 8  # bytes per 64-bit torus element

# Bounds on what client specs may make this machine allocate. concrete's optimizer searches (its
# DEFAUT_DOMAINS) polynomialSize 2^10..2^14 (2^8.. in older releases), glweDimension 1..6 (1..9),
# internal LWE dimension 512..1024 (600..2000) and 1..64 decomposition levels: its largest GLWE key
# is 6 x 2^14 = 98,304 coefficients (9 x 2^14 = 147,456). Observed: the breast cancer test tree
# (depth 5, 6 bits) has LWE keys of 1,536 and 759, a bootstrap key of glweDimension 3 x
# polynomialSize 512 (1 level), a keyswitch key of 3 levels, 78 MB of evaluation keys uncompressed,
# 12 KiB per ciphertext; the private-LoRA matmul circuit one key of 1,280; Concrete ML's benchmark
# trees 74 MiB of evaluation keys (README). A hostile 2^26 key passed the curve; keygen: bad_alloc.
MAX_LWE_DIMENSION = 2**18  # 1.8x the largest GLWE key an older optimizer could name, 170x the test tree's
MAX_POLYNOMIAL_SIZE = 2**16  # 4x the optimizer's largest
MAX_GLWE_DIMENSION = 16  # 1.8x the older optimizer's largest
MAX_KEY_BYTES = 4 * 2**30  # secret and evaluation keys, uncompressed: 55x the test tree's
MAX_VALUE_BYTES = 2**31  # one circuit input or output, uncompressed: the largest envelope veilml reads


class InsecureParametersError(VeilmlError, ValueError):
    """The server's crypto parameters are below the required security, unbounded, or cannot be
    assessed; or a client bundle's parts do not agree."""


@dataclass(frozen=True)
class LweGate:
    """One circuit input or output as the specs describe it: an LWE ciphertext per clear value."""

    shape: tuple[int, ...]  # the clear value's shape
    dimension: int  # LWE dimension of the key it is encrypted under
    width: int | None  # bits of the encoded integer (None: not concrete's native integer encoding)
    signed: bool | None

    @property
    def count(self) -> int:
        """Ciphertexts of this value: one per clear integer."""
        return math.prod(self.shape)

    @property
    def max_bytes(self) -> int:
        """Bytes of its uncompressed ciphertexts (masks and bodies): an upper bound of any serialization."""
        return WORD * self.count * (self.dimension + 1)


@dataclass(frozen=True)
class SpecsSummary:
    """What :func:`check_client_specs` read: the circuits' gates, and the keys' total size."""

    circuits: dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]]  # name -> (inputs, outputs)
    key_bytes: int


def _curve(security_bits: int) -> tuple[int, _Curve]:
    """The lowest tabulated curve at or above ``security_bits`` (conservative for lower levels)."""
    if isinstance(security_bits, bool) or not isinstance(security_bits, int) or security_bits <= 0:
        raise ValueError(f"security_bits must be a positive integer, got {security_bits!r}")
    for bits in sorted(_CURVES):
        if bits >= security_bits:
            return bits, _CURVES[bits]
    raise ValueError(f"no security curve for {security_bits} bits; the highest available is {max(_CURVES)}")


def required_stddev_log2(dimension: int, security_bits: int = 128) -> float:
    """Smallest log2(noise stddev) that reaches ``security_bits`` at ``dimension`` (inf below the minimal dimension)."""
    _, curve = _curve(security_bits)
    if dimension < curve.min_dimension:
        return math.inf
    return max(curve.slope * dimension + curve.bias, 2.0 - MODULUS_LOG2)


def meets_security(dimension: int, stddev_log2: float, security_bits: int = 128) -> bool:
    """Whether a binary-key LWE/GLWE encryption with this key dimension and noise reaches ``security_bits``."""
    required = required_stddev_log2(dimension, security_bits)
    return not math.isnan(stddev_log2) and stddev_log2 >= required - _ROUNDING_BITS


def _fmt_log2(value: float) -> str:
    return "2^-inf" if value == -math.inf else f"2^{value:.2f}"


def check_lwe(dimension: int, variance: float, what: str, min_security_bits: int = 128) -> None:
    """Raise :class:`InsecureParametersError` unless (key ``dimension``, noise ``variance``) is secure.

    ``variance`` is relative to the torus, as in concrete's specs; ``what`` names the encryption.
    """
    bits, curve = _curve(min_security_bits)
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 0:
        raise InsecureParametersError(f"cannot assess {what}: its key dimension {dimension!r} is not an integer; {_REFUSE}")
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not (math.isfinite(variance) and variance >= 0):
        raise InsecureParametersError(
            f"cannot assess {what}: its noise variance {variance!r} is not a finite non-negative number; {_REFUSE}"
        )
    stddev_log2 = 0.5 * math.log2(variance) if variance > 0 else -math.inf
    if meets_security(dimension, stddev_log2, bits):
        return
    if dimension < curve.min_dimension:
        need = f"a key dimension of at least {curve.min_dimension}"
    else:
        need = f"noise stddev of at least {_fmt_log2(required_stddev_log2(dimension, bits))} at this dimension"
    raise InsecureParametersError(
        f"the server's crypto parameters are insecure: {what} uses a secret key of dimension {dimension} with "
        f"noise stddev {_fmt_log2(stddev_log2)}, but concrete's {bits}-bit security curve (binary key, 2^64 modulus) "
        f"requires {need}, so this is below the {min_security_bits} bits this client requires; {_REFUSE}, or have it "
        f"compile its circuits with concrete's security_level={bits} (the default is 128)"
    )


# ---------------------------------------------------------------------------------------------
# Strict reading of the specs' JSON


def _malformed(where: str, problem: str) -> InsecureParametersError:
    return InsecureParametersError(
        f"cannot assess the server's client specs: {where} {problem}; {_REFUSE} "
        "(genuine specs are the unedited JSON of concrete-python's circuit.client.specs.serialize())"
    )


def _fields(obj: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """``obj`` as a JSON object with all ``required`` keys and nothing outside ``required + optional``."""
    if not isinstance(obj, dict):
        raise _malformed(where, f"should be a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise _malformed(where, f"lacks {', '.join(missing)}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise _malformed(where, f"has unknown field(s) {', '.join(unknown)}")
    return obj


def _uint(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _UINT32_MAX:
        raise _malformed(f"{where}.{key}", f"should be an integer in [{minimum}, 2^32), got {value!r}")
    return value


def _too_large(what: str, value: int, limit: int, unit: str = "") -> InsecureParametersError:
    return InsecureParametersError(
        f"the server's client specs ask for {what} of {value:,}{unit}, more than the {limit:,}{unit} that concrete's own "
        f"parameter search can produce (see veilml.runtime.security); {_REFUSE_SIZE}"
    )


def _dimension(obj: Mapping[str, Any], key: str, where: str) -> int:
    """An LWE dimension: at least 1 and at most :data:`MAX_LWE_DIMENSION`."""
    value = _uint(obj, key, where, 1)
    if value > MAX_LWE_DIMENSION:
        raise _too_large(f"an LWE dimension ({where}.{key})", value, MAX_LWE_DIMENSION)
    return value


def _variance(obj: Mapping[str, Any], where: str) -> float:
    value = obj["variance"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _malformed(f"{where}.variance", f"should be a finite non-negative number, got {value!r}")
    return float(value)


def _list(obj: Any, where: str, nonempty: bool = False) -> list[Any]:
    if not isinstance(obj, list) or (nonempty and not obj):
        raise _malformed(where, "should be a " + ("non-empty " if nonempty else "") + "JSON list")
    return obj


def _expect(obj: Mapping[str, Any], key: str, where: str, allowed: tuple[Any, ...], what: str) -> None:
    if obj[key] not in allowed:
        raise _malformed(f"{where}.{key}", f"is {obj[key]!r}, but only {what} can be assessed")


def _native_modulus(obj: Mapping[str, Any], where: str) -> None:
    modulus = _fields(obj["modulus"], f"{where}.modulus", ("modulus",))
    if modulus["modulus"] != {"native": {}}:
        raise _malformed(f"{where}.modulus", f"is {modulus['modulus']!r}, but only the native 2^64 modulus can be assessed")


def _common_params(params: Mapping[str, Any], where: str) -> None:
    _expect(params, "integerPrecision", where, (MODULUS_LOG2,), "64-bit integers")
    _expect(params, "keyType", where, ("binary",), "binary keys")
    _native_modulus(params, where)


def _decomposition(params: Mapping[str, Any], where: str) -> None:
    levels, base_log = _uint(params, "levelCount", where, 1), _uint(params, "baseLog", where, 1)
    if levels * base_log > MODULUS_LOG2:
        raise _malformed(where, f"decomposes {levels} x {base_log} bits, more than the {MODULUS_LOG2}-bit modulus")


def _glwe(params: Mapping[str, Any], where: str) -> tuple[int, int]:
    """(glweDimension, polynomialSize), bounded."""
    glwe, poly = _uint(params, "glweDimension", where, 1), _uint(params, "polynomialSize", where, 1)
    if poly & (poly - 1):
        raise _malformed(f"{where}.polynomialSize", f"is {poly}, not a power of two")
    if glwe > MAX_GLWE_DIMENSION:
        raise _too_large(f"a GLWE dimension ({where}.glweDimension)", glwe, MAX_GLWE_DIMENSION)
    if poly > MAX_POLYNOMIAL_SIZE:
        raise _too_large(f"a polynomial size ({where}.polynomialSize)", poly, MAX_POLYNOMIAL_SIZE)
    return glwe, poly


def _shape(body: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = _fields(body.get("abstractShape"), f"{where}.abstractShape", ("dimensions",))
    dims = _list(shape["dimensions"], f"{where}.abstractShape.dimensions")
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= _UINT32_MAX:
            raise _malformed(f"{where}.abstractShape.dimensions[{i}]", f"should be an integer in [0, 2^32), got {d!r}")
    return tuple(dims)


def _integer_encoding(body: Mapping[str, Any]) -> tuple[int | None, bool | None]:
    """(width, signed) of concrete's native integer encoding; (None, None) for any other encoding."""
    encoding = body.get("encoding")
    integer = encoding.get("integer") if isinstance(encoding, dict) else None
    if isinstance(integer, dict) and integer.get("mode") == {"native": {}}:
        width, signed = integer.get("width"), integer.get("isSigned")
        if type(width) is int and isinstance(signed, bool):
            return width, signed
    return None, None


def _strict_json(text: str | bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise _malformed("a JSON object", f"repeats a key ({sorted(k for k in set(keys) if keys.count(k) > 1)})")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise _malformed("the JSON", f"contains {name}")

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed("the data", f"is not UTF-8 text ({exc})") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except InsecureParametersError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _malformed("the data", f"is not valid JSON ({exc})") from None


def _specs_text(specs: Any) -> str | bytes:
    if isinstance(specs, (bytes, str)):
        return specs
    if isinstance(specs, (bytearray, memoryview)):
        return bytes(specs)
    serialize: Callable[[], Any] | None = getattr(specs, "serialize", None)
    if callable(serialize):
        return _specs_text(serialize())
    raise TypeError(f"client specs should be bytes, str or have .serialize(), got {type(specs).__name__}")


def check_client_specs(
    specs: bytes | str | Any, min_security_bits: int = 128, *, max_key_bytes: int = MAX_KEY_BYTES
) -> SpecsSummary:
    """Refuse client specs (concrete's serialized ``ClientSpecs``) below ``min_security_bits``.

    Checks every encryption under a secret key that the specs describe, against concrete's curve
    for binary keys and the 2^64 modulus; that every key id and key dimension they name agree; that
    every circuit input and output is an LWE ciphertext (never a plaintext or index value, which
    the client would send or receive in the clear); and that dimensions, keys (at most
    ``max_key_bytes`` uncompressed) and values stay within what concrete's optimizer produces.
    Raises :class:`InsecureParametersError` on insecure, inconsistent, unbounded or unassessable
    specs; returns what it read (the gates of each circuit).
    """
    _curve(min_security_bits)  # a bad requirement is the caller's error, raised first
    root = _fields(_strict_json(_specs_text(specs)), "the specs", ("keyset", "circuits"), ("tfhers_specs",))
    _check_no_tfhers(root.get("tfhers_specs"))

    def lwe(dimension: int, variance: float, what: str) -> None:
        check_lwe(dimension, variance, what, min_security_bits)

    keyset = _fields(root["keyset"], "keyset", ("lweSecretKeys", "lweBootstrapKeys", "lweKeyswitchKeys", "packingKeyswitchKeys"))
    keys: dict[int, int] = {}
    for i, entry in enumerate(_list(keyset["lweSecretKeys"], "keyset.lweSecretKeys", nonempty=True)):
        where = f"keyset.lweSecretKeys[{i}]"
        key = _fields(entry, where, ("id", "params"))
        params = _fields(key["params"], f"{where}.params", ("lweDimension", "integerPrecision", "keyType"))
        _expect(params, "integerPrecision", f"{where}.params", (MODULUS_LOG2,), "64-bit integers")
        _expect(params, "keyType", f"{where}.params", ("binary",), "binary keys")
        key_id = _uint(key, "id", where)
        if key_id in keys:
            raise _malformed(where, f"repeats key id {key_id}")
        keys[key_id] = _dimension(params, "lweDimension", f"{where}.params")
    key_bytes = WORD * sum(keys.values())

    def key_dim(key_id: int, claimed: int | None, where: str) -> int:
        if key_id not in keys:
            raise InsecureParametersError(
                f"the server's client specs are inconsistent: {where} names secret key {key_id}, which the keyset "
                f"does not define (keys: {sorted(keys)}); {_REFUSE}"
            )
        if claimed is not None and claimed != keys[key_id]:
            raise InsecureParametersError(
                f"the server's client specs are inconsistent: {where} claims dimension {claimed} for secret key "
                f"{key_id}, whose dimension is {keys[key_id]}; {_REFUSE}"
            )
        return keys[key_id]

    def evaluation_keys(name: str, params_fields: tuple[str, ...]) -> list[tuple[str, Mapping[str, Any], int, int]]:
        """(where, params, input key id, output key id) for each well-formed key of one kind."""
        out, seen = [], set()
        for i, entry in enumerate(_list(keyset[name], f"keyset.{name}")):
            where = f"keyset.{name}[{i}]"
            info = _fields(entry, where, ("id", "inputId", "outputId", "params", "compression"))
            _expect(info, "compression", where, ("none", "seed"), "uncompressed or seeded keys")
            if _uint(info, "id", where) in seen:
                raise _malformed(where, f"repeats id {info['id']}")
            seen.add(info["id"])
            params = _fields(info["params"], f"{where}.params", params_fields)
            _common_params(params, f"{where}.params")
            _decomposition(params, f"{where}.params")
            out.append((where, params, _uint(info, "inputId", where), _uint(info, "outputId", where)))
        return out

    # Each evaluation key encrypts its input key under its output key: a GLWE key of dimension
    # glweDimension * polynomialSize (bootstrap, packing keyswitch) or an LWE key (keyswitch).
    common = ("levelCount", "baseLog", "variance", "integerPrecision", "modulus", "keyType", "inputLweDimension")
    glwe = ("glweDimension", "polynomialSize")
    for name, label, extra in (
        ("lweBootstrapKeys", "bootstrap key", glwe),
        ("lweKeyswitchKeys", "keyswitch key", ("outputLweDimension",)),
        ("packingKeyswitchKeys", "packing keyswitch key", glwe + ("innerLweDimension",)),
    ):
        for where, params, in_id, out_id in evaluation_keys(name, common + extra):
            at = f"{where}.params"
            size_in = key_dim(in_id, _dimension(params, "inputLweDimension", at), f"{where} (input)")
            levels = _uint(params, "levelCount", at, 1)
            if "innerLweDimension" in params:
                _uint(params, "innerLweDimension", at)
            if "outputLweDimension" in params:
                size = key_dim(out_id, _dimension(params, "outputLweDimension", at), f"{where} (output)")
                # one LWE ciphertext under the output key per input coefficient and level
                key_bytes += WORD * size_in * levels * (size + 1)
            else:
                k, poly = _glwe(params, at)
                size = key_dim(out_id, k * poly, f"{where} (output GLWE key, glweDimension x polynomialSize)")
                # bootstrap: one GGSW per input coefficient, levels x (k+1) GLWE ciphertexts of (k+1)
                # polynomials; packing keyswitch: levels GLWE ciphertexts per input coefficient
                rows = (k + 1) if name == "lweBootstrapKeys" else 1
                key_bytes += WORD * size_in * levels * rows * (k + 1) * poly
            lwe(size, _variance(params, at), f"{label} {where} (encryption under key {out_id})")
    if key_bytes > max_key_bytes:
        raise _too_large("secret and evaluation keys", key_bytes, max_key_bytes, " bytes")

    circuits: dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]] = {}

    for c, entry in enumerate(_list(root["circuits"], "circuits", nonempty=True)):
        circuit = _fields(entry, f"circuits[{c}]", ("inputs", "outputs", "name"))
        gates: dict[str, list[LweGate]] = {"inputs": [], "outputs": []}
        for side in ("inputs", "outputs"):
            for g, gate in enumerate(_list(circuit[side], f"circuits[{c}].{side}")):
                where = f"circuits[{c}].{side}[{g}]"
                type_info = _fields(gate, where, ("rawInfo", "typeInfo"))["typeInfo"]
                if not isinstance(type_info, dict) or len(type_info) != 1:
                    raise _malformed(f"{where}.typeInfo", "should hold exactly one of lweCiphertext, plaintext, index")
                kind, body = next(iter(type_info.items()))
                if kind in ("plaintext", "index"):  # a clear value: the client would send (or get) it unencrypted
                    raise InsecureParametersError(
                        f"the server's client specs declare {side[:-1]} {g} of circuit {circuit['name']!r} ({where}) "
                        f"as {'an' if kind == 'index' else 'a'} {kind} value, not an LWE ciphertext: the client would "
                        + ("send your data unencrypted" if side == "inputs" else "receive a result in the clear")
                        + f"; {_REFUSE}"
                    )
                if kind != "lweCiphertext":
                    raise _malformed(f"{where}.typeInfo", f"has unknown kind {kind!r}")
                where += ".typeInfo.lweCiphertext"
                optional = ("concreteShape", "encoding")
                ct = _fields(body, where, ("encryption", "integerPrecision", "compression", "abstractShape"), optional)
                _expect(ct, "integerPrecision", where, (MODULUS_LOG2,), "64-bit integers")
                _expect(ct, "compression", where, ("none", "seed"), "uncompressed or seeded ciphertexts")
                enc = _fields(ct["encryption"], f"{where}.encryption", ("keyId", "variance", "lweDimension", "modulus"))
                _native_modulus(enc, f"{where}.encryption")
                key_id = _uint(enc, "keyId", f"{where}.encryption")
                size = key_dim(key_id, _dimension(enc, "lweDimension", f"{where}.encryption"), where)
                label = f"{side[:-1]} {g} of circuit {circuit['name']!r} (LWE encryption under key {key_id})"
                lwe(size, _variance(enc, f"{where}.encryption"), label)
                value = LweGate(_shape(ct, where), size, *_integer_encoding(ct))
                if value.max_bytes > MAX_VALUE_BYTES:
                    raise _too_large(f"{label}: {value.count:,} ciphertexts", value.max_bytes, MAX_VALUE_BYTES, " bytes")
                gates[side].append(value)
        name = circuit["name"]
        if not isinstance(name, str) or name in circuits:
            raise _malformed(f"circuits[{c}].name", f"should be a circuit name used once, got {name!r}")
        circuits[name] = (tuple(gates["inputs"]), tuple(gates["outputs"]))
    return SpecsSummary(circuits, key_bytes)


def encrypted_gates(specs: bytes | str | Any) -> dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]]:
    """Each circuit's inputs and outputs (name -> (inputs, outputs)), once each is known to be an LWE ciphertext.

    The client's own last check before it encrypts or decrypts anything (its first is
    :func:`check_client_specs`): a plaintext or index gate, or any kind it does not know, raises
    :class:`InsecureParametersError`, so no row is ever serialized unencrypted. It checks no
    security level: :class:`~veilml.runtime.FHEClient` also serves circuits compiled here.
    """
    root = _strict_json(_specs_text(specs))
    circuits = root.get("circuits") if isinstance(root, dict) else None
    out: dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]] = {}
    for c, circuit in enumerate(_list(circuits, "circuits", nonempty=True)):
        if not isinstance(circuit, dict):
            raise _malformed(f"circuits[{c}]", "should be a JSON object")
        gates: list[tuple[LweGate, ...]] = []
        for side in ("inputs", "outputs"):
            side_gates = []
            for g, gate in enumerate(_list(circuit.get(side), f"circuits[{c}].{side}")):
                type_info = gate.get("typeInfo") if isinstance(gate, dict) else None
                kind = next(iter(type_info), None) if isinstance(type_info, dict) and len(type_info) == 1 else None
                body = type_info[kind] if kind == "lweCiphertext" else None
                if not isinstance(body, dict) or not isinstance(body.get("encryption"), dict):
                    what = "a malformed LWE ciphertext" if kind == "lweCiphertext" else f"a {kind!r} value"
                    raise InsecureParametersError(
                        f"{side[:-1]} {g} of circuit {c} is {what}, not an LWE ciphertext: this client never sends or "
                        f"receives a value unencrypted; {_REFUSE}"
                    )
                where = f"circuits[{c}].{side}[{g}].typeInfo.lweCiphertext"
                dimension = _dimension(body["encryption"], "lweDimension", f"{where}.encryption")
                side_gates.append(LweGate(_shape(body, where), dimension, *_integer_encoding(body)))
            gates.append(tuple(side_gates))
        out[str(circuit.get("name", c))] = (gates[0], gates[1])
    return out


def _check_no_tfhers(tfhers: Any) -> None:
    """TFHE-rs interop carries its own parameters, which this check does not assess: allow only empty entries."""
    if tfhers is None:
        return
    fields = ("input_types_per_func", "output_types_per_func", "input_shapes_per_func", "output_shapes_per_func")
    for name, per_func in _fields(tfhers, "tfhers_specs", (), fields).items():
        if not isinstance(per_func, dict) or any(
            not isinstance(entries, list) or any(e is not None for e in entries) for entries in per_func.values()
        ):
            raise _malformed(f"tfhers_specs.{name}", "describes TFHE-rs values, whose parameters this check does not assess")
