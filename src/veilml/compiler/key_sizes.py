"""Exact sizes of a circuit's keys, computed from the key parameters in its client specs.

concrete's statistics over-count bootstrap keys (breast cancer trees: depth 5, 151 MB reported for
50.3 MB serialized; depth 3, 258 MB for 51.6 MB), so veilml computes sizes from the parameters
instead; the tests compare them with serialized keys. Elements are 64-bit words. A compressed (seeded) key stores
only the body of each ciphertext: the masks are regenerated from a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

WORD = 8  # bytes per 64-bit torus element


@dataclass(frozen=True)
class KeySizes:
    """Bytes of each kind of key; ``*_compressed`` are the seeded forms that travel when compression is on."""

    secret: int
    bootstrap: int
    keyswitch: int
    bootstrap_compressed: int
    keyswitch_compressed: int


def _specs_json(specs: Any) -> dict[str, Any]:
    text = specs.serialize() if hasattr(specs, "serialize") else specs
    return json.loads(text)


def key_sizes(specs: Any) -> KeySizes:
    """Sizes of the keys described by concrete client ``specs`` (an object with ``serialize()``, or its JSON)."""
    keyset = _specs_json(specs)["keyset"]
    secret = sum(key["params"]["lweDimension"] for key in keyset["lweSecretKeys"]) * WORD
    bootstrap = bootstrap_compressed = 0
    for key in keyset["lweBootstrapKeys"]:
        p = key["params"]
        # one GGSW per input-key coefficient: levelCount x (k+1) GLWE ciphertexts of (k+1) polynomials
        ggsw_rows = p["inputLweDimension"] * p["levelCount"] * (p["glweDimension"] + 1)
        bootstrap += ggsw_rows * (p["glweDimension"] + 1) * p["polynomialSize"] * WORD
        bootstrap_compressed += ggsw_rows * p["polynomialSize"] * WORD
    keyswitch = keyswitch_compressed = 0
    for key in keyset["lweKeyswitchKeys"]:
        p = key["params"]
        rows = p["inputLweDimension"] * p["levelCount"]  # one LWE ciphertext per input coefficient and level
        keyswitch += rows * (p["outputLweDimension"] + 1) * WORD
        keyswitch_compressed += rows * WORD
    if keyset.get("packingKeyswitchKeys"):
        raise NotImplementedError("key sizes of packing keyswitch keys are not computed (no veilml circuit uses them)")
    return KeySizes(secret, bootstrap, keyswitch, bootstrap_compressed, keyswitch_compressed)


#: bytes before the bodies of a veilml seeded input (see veilml.runtime.seeded_inputs)
SEEDED_HEADER_BYTES = 40


def wire_input_bytes(specs: Any, size_of_inputs: int, values: int | None = None) -> int:
    """Bytes of a circuit's input on the wire: concrete's size, unless veilml seeds the input.

    A circuit whose one input concrete takes uncompressed receives veilml's seeded inputs
    (``Configuration(input_encryption="veilml")``): a header and 8 bytes per ciphertext, for the
    ``values`` the client encrypts (by default the circuit's input size).
    """
    inputs = _specs_json(specs)["circuits"][0]["inputs"]
    lwe = inputs[0].get("typeInfo", {}).get("lweCiphertext") if len(inputs) == 1 else None
    if lwe is None or lwe.get("compression") != "none":
        return size_of_inputs
    count = 1
    for dimension in lwe["abstractShape"]["dimensions"]:
        count *= int(dimension)
    return SEEDED_HEADER_BYTES + WORD * (count if values is None else values)
