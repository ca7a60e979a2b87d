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

The strict, bounded reading of the specs' JSON (and those bounds) is :mod:`veilml.runtime.specs_reading`;
this module judges what it reads against concrete's security curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from veilml.runtime import specs_reading as read
from veilml.runtime.specs_reading import (
    MAX_GLWE_DIMENSION,
    MAX_KEY_BYTES,
    MAX_LWE_DIMENSION,
    MAX_POLYNOMIAL_SIZE,
    MAX_VALUE_BYTES,
    MODULUS_LOG2,
    REFUSE,
    WORD,
    InsecureParametersError,
)

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
        raise InsecureParametersError(f"cannot assess {what}: its key dimension {dimension!r} is not an integer; {REFUSE}")
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not (math.isfinite(variance) and variance >= 0):
        raise InsecureParametersError(
            f"cannot assess {what}: its noise variance {variance!r} is not a finite non-negative number; {REFUSE}"
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
        f"requires {need}, so this is below the {min_security_bits} bits this client requires; {REFUSE}, or have it "
        f"compile its circuits with concrete's security_level={bits} (the default is 128)"
    )


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
    root = read.fields(read.strict_json(read.specs_text(specs)), "the specs", ("keyset", "circuits"), ("tfhers_specs",))
    read.check_no_tfhers(root.get("tfhers_specs"))
    reader = _SpecsReader(root["keyset"], min_security_bits)
    if reader.key_bytes > max_key_bytes:
        raise read.too_large("secret and evaluation keys", reader.key_bytes, max_key_bytes, " bytes")
    return SpecsSummary(reader.circuits(root["circuits"]), reader.key_bytes)


#: each kind of evaluation key: its field in the keyset, its name in messages, its parameters beyond the common ones
_EVALUATION_KEYS = (
    ("lweBootstrapKeys", "bootstrap key", ("glweDimension", "polynomialSize")),
    ("lweKeyswitchKeys", "keyswitch key", ("outputLweDimension",)),
    ("packingKeyswitchKeys", "packing keyswitch key", ("glweDimension", "polynomialSize", "innerLweDimension")),
)
_COMMON = ("levelCount", "baseLog", "variance", "integerPrecision", "modulus", "keyType", "inputLweDimension")


class _SpecsReader:
    """What :func:`check_client_specs` reads: the secret keys (dimension by id), every evaluation key (each
    encryption checked, their sizes summed in ``key_bytes``), then the circuits' gates."""

    def __init__(self, keyset: Any, min_security_bits: int) -> None:
        self.min_security_bits = min_security_bits
        self.keyset = read.fields(keyset, "keyset", ("lweSecretKeys", *(name for name, _, _ in _EVALUATION_KEYS)))
        self.keys = self._secret_keys()
        self.key_bytes = WORD * sum(self.keys.values())
        for name, label, extra in _EVALUATION_KEYS:
            for where, params, in_id, out_id in self._evaluation_keys(name, _COMMON + extra):
                self._evaluation_key(name, label, where, params, in_id, out_id)

    def lwe(self, size: int, noise: float, what: str) -> None:
        check_lwe(size, noise, what, self.min_security_bits)

    def key_dim(self, key_id: int, claimed: int | None, where: str) -> int:
        """The dimension of secret key ``key_id``, which ``where`` names (and may claim)."""
        if key_id not in self.keys:
            raise InsecureParametersError(
                f"the server's client specs are inconsistent: {where} names secret key {key_id}, which the keyset "
                f"does not define (keys: {sorted(self.keys)}); {REFUSE}"
            )
        if claimed is not None and claimed != self.keys[key_id]:
            raise InsecureParametersError(
                f"the server's client specs are inconsistent: {where} claims dimension {claimed} for secret key "
                f"{key_id}, whose dimension is {self.keys[key_id]}; {REFUSE}"
            )
        return self.keys[key_id]

    def _secret_keys(self) -> dict[int, int]:
        keys: dict[int, int] = {}
        for i, entry in enumerate(read.json_list(self.keyset["lweSecretKeys"], "keyset.lweSecretKeys", nonempty=True)):
            where = f"keyset.lweSecretKeys[{i}]"
            key = read.fields(entry, where, ("id", "params"))
            params = read.fields(key["params"], f"{where}.params", ("lweDimension", "integerPrecision", "keyType"))
            read.expect(params, "integerPrecision", f"{where}.params", (MODULUS_LOG2,), "64-bit integers")
            read.expect(params, "keyType", f"{where}.params", ("binary",), "binary keys")
            key_id = read.uint(key, "id", where)
            if key_id in keys:
                raise read.malformed(where, f"repeats key id {key_id}")
            keys[key_id] = read.dimension(params, "lweDimension", f"{where}.params")
        return keys

    def _evaluation_keys(self, name: str, params_fields: tuple[str, ...]) -> list[tuple[str, Mapping[str, Any], int, int]]:
        """(where, params, input key id, output key id) for each well-formed key of one kind."""
        out, seen = [], set()
        for i, entry in enumerate(read.json_list(self.keyset[name], f"keyset.{name}")):
            where = f"keyset.{name}[{i}]"
            info = read.fields(entry, where, ("id", "inputId", "outputId", "params", "compression"))
            read.expect(info, "compression", where, ("none", "seed"), "uncompressed or seeded keys")
            if read.uint(info, "id", where) in seen:
                raise read.malformed(where, f"repeats id {info['id']}")
            seen.add(info["id"])
            params = read.fields(info["params"], f"{where}.params", params_fields)
            read.common_params(params, f"{where}.params")
            read.decomposition(params, f"{where}.params")
            out.append((where, params, read.uint(info, "inputId", where), read.uint(info, "outputId", where)))
        return out

    def _evaluation_key(self, name: str, label: str, where: str, params: Mapping[str, Any], in_id: int, out_id: int) -> None:
        """Check one evaluation key and count its bytes. Each encrypts its input key under its output key: a GLWE
        key of dimension glweDimension * polynomialSize (bootstrap, packing keyswitch) or an LWE key (keyswitch)."""
        at = f"{where}.params"
        size_in = self.key_dim(in_id, read.dimension(params, "inputLweDimension", at), f"{where} (input)")
        levels = read.uint(params, "levelCount", at, 1)
        if "innerLweDimension" in params:
            read.uint(params, "innerLweDimension", at)
        if "outputLweDimension" in params:
            size = self.key_dim(out_id, read.dimension(params, "outputLweDimension", at), f"{where} (output)")
            # one LWE ciphertext under the output key per input coefficient and level
            self.key_bytes += WORD * size_in * levels * (size + 1)
        else:
            k, poly = read.glwe_params(params, at)
            size = self.key_dim(out_id, k * poly, f"{where} (output GLWE key, glweDimension x polynomialSize)")
            # bootstrap: one GGSW per input coefficient, levels x (k+1) GLWE ciphertexts of (k+1)
            # polynomials; packing keyswitch: levels GLWE ciphertexts per input coefficient
            rows = (k + 1) if name == "lweBootstrapKeys" else 1
            self.key_bytes += WORD * size_in * levels * rows * (k + 1) * poly
        self.lwe(size, read.variance(params, at), f"{label} {where} (encryption under key {out_id})")

    def circuits(self, circuits: Any) -> dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]]:
        """Each circuit's inputs and outputs (name -> (inputs, outputs)), every one an LWE ciphertext checked here."""
        out: dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]] = {}
        for c, entry in enumerate(read.json_list(circuits, "circuits", nonempty=True)):
            circuit = read.fields(entry, f"circuits[{c}]", ("inputs", "outputs", "name"))
            gates: dict[str, list[LweGate]] = {"inputs": [], "outputs": []}
            for side in ("inputs", "outputs"):
                for g, gate in enumerate(read.json_list(circuit[side], f"circuits[{c}].{side}")):
                    gates[side].append(self._gate(gate, f"circuits[{c}].{side}[{g}]", f"{side[:-1]} {g}", circuit["name"]))
            name = circuit["name"]
            if not isinstance(name, str) or name in out:
                raise read.malformed(f"circuits[{c}].name", f"should be a circuit name used once, got {name!r}")
            out[name] = (tuple(gates["inputs"]), tuple(gates["outputs"]))
        return out

    def _gate(self, gate: Any, where: str, which: str, circuit: Any) -> LweGate:
        """One input or output (``which``: ``"input 0"``, ``"output 1"``, ...) of ``circuit``."""
        type_info = read.fields(gate, where, ("rawInfo", "typeInfo"))["typeInfo"]
        if not isinstance(type_info, dict) or len(type_info) != 1:
            raise read.malformed(f"{where}.typeInfo", "should hold exactly one of lweCiphertext, plaintext, index")
        kind, body = next(iter(type_info.items()))
        if kind in ("plaintext", "index"):  # a clear value: the client would send (or get) it unencrypted
            raise InsecureParametersError(
                f"the server's client specs declare {which} of circuit {circuit!r} ({where}) "
                f"as {'an' if kind == 'index' else 'a'} {kind} value, not an LWE ciphertext: the client would "
                + ("send your data unencrypted" if which.startswith("input") else "receive a result in the clear")
                + f"; {REFUSE}"
            )
        if kind != "lweCiphertext":
            raise read.malformed(f"{where}.typeInfo", f"has unknown kind {kind!r}")
        where += ".typeInfo.lweCiphertext"
        optional = ("concreteShape", "encoding")
        ct = read.fields(body, where, ("encryption", "integerPrecision", "compression", "abstractShape"), optional)
        read.expect(ct, "integerPrecision", where, (MODULUS_LOG2,), "64-bit integers")
        read.expect(ct, "compression", where, ("none", "seed"), "uncompressed or seeded ciphertexts")
        enc = read.fields(ct["encryption"], f"{where}.encryption", ("keyId", "variance", "lweDimension", "modulus"))
        read.native_modulus(enc, f"{where}.encryption")
        key_id = read.uint(enc, "keyId", f"{where}.encryption")
        size = self.key_dim(key_id, read.dimension(enc, "lweDimension", f"{where}.encryption"), where)
        label = f"{which} of circuit {circuit!r} (LWE encryption under key {key_id})"
        self.lwe(size, read.variance(enc, f"{where}.encryption"), label)
        value = LweGate(read.shape(ct, where), size, *read.integer_encoding(ct))
        if value.max_bytes > MAX_VALUE_BYTES:
            raise read.too_large(f"{label}: {value.count:,} ciphertexts", value.max_bytes, MAX_VALUE_BYTES, " bytes")
        return value


def encrypted_gates(specs: bytes | str | Any) -> dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]]:
    """Each circuit's inputs and outputs (name -> (inputs, outputs)), once each is known to be an LWE ciphertext.

    The client's own last check before it encrypts or decrypts anything (its first is
    :func:`check_client_specs`): a plaintext or index gate, or any kind it does not know, raises
    :class:`InsecureParametersError`, so no row is ever serialized unencrypted. It checks no
    security level: :class:`~veilml.runtime.FHEClient` also serves circuits compiled here.
    """
    root = read.strict_json(read.specs_text(specs))
    circuits = root.get("circuits") if isinstance(root, dict) else None
    out: dict[str, tuple[tuple[LweGate, ...], tuple[LweGate, ...]]] = {}
    for c, circuit in enumerate(read.json_list(circuits, "circuits", nonempty=True)):
        if not isinstance(circuit, dict):
            raise read.malformed(f"circuits[{c}]", "should be a JSON object")
        gates: list[tuple[LweGate, ...]] = []
        for side in ("inputs", "outputs"):
            side_gates = []
            for g, gate in enumerate(read.json_list(circuit.get(side), f"circuits[{c}].{side}")):
                type_info = gate.get("typeInfo") if isinstance(gate, dict) else None
                kind = next(iter(type_info), None) if isinstance(type_info, dict) and len(type_info) == 1 else None
                body = type_info[kind] if kind == "lweCiphertext" else None
                if not isinstance(body, dict) or not isinstance(body.get("encryption"), dict):
                    what = "a malformed LWE ciphertext" if kind == "lweCiphertext" else f"a {kind!r} value"
                    raise InsecureParametersError(
                        f"{side[:-1]} {g} of circuit {c} is {what}, not an LWE ciphertext: this client never sends or "
                        f"receives a value unencrypted; {REFUSE}"
                    )
                where = f"circuits[{c}].{side}[{g}].typeInfo.lweCiphertext"
                dimension = read.dimension(body["encryption"], "lweDimension", f"{where}.encryption")
                side_gates.append(LweGate(read.shape(body, where), dimension, *read.integer_encoding(body)))
            gates.append(tuple(side_gates))
        out[str(circuit.get("name", c))] = (gates[0], gates[1])
    return out
