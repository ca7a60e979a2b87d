"""Strict reading of concrete's client specs (JSON) for :mod:`veilml.runtime.security`, and its bounds.

Every field is read typed and bounded, or the specs are refused with :class:`InsecureParametersError`:
unknown or missing fields, repeated keys, non-finite numbers, sizes past what concrete's own parameter
search produces (a hostile size would make key generation or encryption exhaust memory). Nothing here
judges security; :func:`~veilml.runtime.security.check_client_specs` does, from what these readers return.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "MAX_GLWE_DIMENSION",
    "MAX_KEY_BYTES",
    "MAX_LWE_DIMENSION",
    "MAX_POLYNOMIAL_SIZE",
    "MAX_VALUE_BYTES",
    "MODULUS_LOG2",
    "REFUSE",
    "REFUSE_SIZE",
    "UINT32_MAX",
    "WORD",
    "InsecureParametersError",
    "check_no_tfhers",
    "common_params",
    "decomposition",
    "dimension",
    "expect",
    "fields",
    "glwe_params",
    "integer_encoding",
    "json_list",
    "malformed",
    "native_modulus",
    "shape",
    "specs_text",
    "strict_json",
    "too_large",
    "uint",
    "variance",
]

MODULUS_LOG2 = 64
REFUSE = "refuse this server: it may be trying to read your data"
REFUSE_SIZE = "refuse this server: it may be hostile, trying to exhaust this machine's memory"
UINT32_MAX = 2**32 - 1
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


def malformed(where: str, problem: str) -> InsecureParametersError:
    """The refusal of specs that cannot be read: ``where`` in them, and the ``problem``."""
    return InsecureParametersError(
        f"cannot assess the server's client specs: {where} {problem}; {REFUSE} "
        "(genuine specs are the unedited JSON of concrete-python's circuit.client.specs.serialize())"
    )


def fields(obj: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """``obj`` as a JSON object with all ``required`` keys and nothing outside ``required + optional``."""
    if not isinstance(obj, dict):
        raise malformed(where, f"should be a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise malformed(where, f"lacks {', '.join(missing)}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise malformed(where, f"has unknown field(s) {', '.join(unknown)}")
    return obj


def uint(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    """``obj[key]``, an integer from ``minimum`` below 2^32."""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= UINT32_MAX:
        raise malformed(f"{where}.{key}", f"should be an integer in [{minimum}, 2^32), got {value!r}")
    return value


def too_large(what: str, value: int, limit: int, unit: str = "") -> InsecureParametersError:
    """The refusal of a size past what concrete's parameter search produces."""
    return InsecureParametersError(
        f"the server's client specs ask for {what} of {value:,}{unit}, more than the {limit:,}{unit} that concrete's own "
        f"parameter search can produce (see veilml.runtime.security); {REFUSE_SIZE}"
    )


def dimension(obj: Mapping[str, Any], key: str, where: str) -> int:
    """An LWE dimension: at least 1 and at most :data:`MAX_LWE_DIMENSION`."""
    value = uint(obj, key, where, 1)
    if value > MAX_LWE_DIMENSION:
        raise too_large(f"an LWE dimension ({where}.{key})", value, MAX_LWE_DIMENSION)
    return value


def variance(obj: Mapping[str, Any], where: str) -> float:
    """``obj["variance"]``, a finite non-negative number."""
    value = obj["variance"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise malformed(f"{where}.variance", f"should be a finite non-negative number, got {value!r}")
    return float(value)


def json_list(obj: Any, where: str, nonempty: bool = False) -> list[Any]:
    """``obj``, a JSON list (not empty, if ``nonempty``)."""
    if not isinstance(obj, list) or (nonempty and not obj):
        raise malformed(where, "should be a " + ("non-empty " if nonempty else "") + "JSON list")
    return obj


def expect(obj: Mapping[str, Any], key: str, where: str, allowed: tuple[Any, ...], what: str) -> None:
    """Refuse ``obj[key]`` unless it is one of ``allowed`` (``what`` they are, for the message)."""
    if obj[key] not in allowed:
        raise malformed(f"{where}.{key}", f"is {obj[key]!r}, but only {what} can be assessed")


def native_modulus(obj: Mapping[str, Any], where: str) -> None:
    """Refuse any modulus but the native 2^64."""
    modulus = fields(obj["modulus"], f"{where}.modulus", ("modulus",))
    if modulus["modulus"] != {"native": {}}:
        raise malformed(f"{where}.modulus", f"is {modulus['modulus']!r}, but only the native 2^64 modulus can be assessed")


def common_params(params: Mapping[str, Any], where: str) -> None:
    """Refuse an evaluation key's parameters unless 64-bit, binary-keyed and on the native modulus."""
    expect(params, "integerPrecision", where, (MODULUS_LOG2,), "64-bit integers")
    expect(params, "keyType", where, ("binary",), "binary keys")
    native_modulus(params, where)


def decomposition(params: Mapping[str, Any], where: str) -> None:
    """Refuse a decomposition (levels x base) wider than the modulus."""
    levels, base_log = uint(params, "levelCount", where, 1), uint(params, "baseLog", where, 1)
    if levels * base_log > MODULUS_LOG2:
        raise malformed(where, f"decomposes {levels} x {base_log} bits, more than the {MODULUS_LOG2}-bit modulus")


def glwe_params(params: Mapping[str, Any], where: str) -> tuple[int, int]:
    """(glweDimension, polynomialSize), bounded."""
    glwe, poly = uint(params, "glweDimension", where, 1), uint(params, "polynomialSize", where, 1)
    if poly & (poly - 1):
        raise malformed(f"{where}.polynomialSize", f"is {poly}, not a power of two")
    if glwe > MAX_GLWE_DIMENSION:
        raise too_large(f"a GLWE dimension ({where}.glweDimension)", glwe, MAX_GLWE_DIMENSION)
    if poly > MAX_POLYNOMIAL_SIZE:
        raise too_large(f"a polynomial size ({where}.polynomialSize)", poly, MAX_POLYNOMIAL_SIZE)
    return glwe, poly


def shape(body: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """The abstract shape of a value: a list of integers below 2^32."""
    shape = fields(body.get("abstractShape"), f"{where}.abstractShape", ("dimensions",))
    dims = json_list(shape["dimensions"], f"{where}.abstractShape.dimensions")
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= UINT32_MAX:
            raise malformed(f"{where}.abstractShape.dimensions[{i}]", f"should be an integer in [0, 2^32), got {d!r}")
    return tuple(dims)


def integer_encoding(body: Mapping[str, Any]) -> tuple[int | None, bool | None]:
    """(width, signed) of concrete's native integer encoding; (None, None) for any other encoding."""
    encoding = body.get("encoding")
    integer = encoding.get("integer") if isinstance(encoding, dict) else None
    if isinstance(integer, dict) and integer.get("mode") == {"native": {}}:
        width, signed = integer.get("width"), integer.get("isSigned")
        if type(width) is int and isinstance(signed, bool):
            return width, signed
    return None, None


def strict_json(text: str | bytes) -> Any:
    """The JSON document ``text`` holds: UTF-8, no repeated key, no NaN or infinity."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise malformed("a JSON object", f"repeats a key ({sorted(k for k in set(keys) if keys.count(k) > 1)})")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise malformed("the JSON", f"contains {name}")

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise malformed("the data", f"is not UTF-8 text ({exc})") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except InsecureParametersError:
        raise
    except (ValueError, RecursionError) as exc:
        raise malformed("the data", f"is not valid JSON ({exc})") from None


def specs_text(specs: Any) -> str | bytes:
    """The serialized specs: bytes or text as given, or what ``specs.serialize()`` returns."""
    if isinstance(specs, (bytes, str)):
        return specs
    if isinstance(specs, (bytearray, memoryview)):
        return bytes(specs)
    serialize: Callable[[], Any] | None = getattr(specs, "serialize", None)
    if callable(serialize):
        return specs_text(serialize())
    raise TypeError(f"client specs should be bytes, str or have .serialize(), got {type(specs).__name__}")


def check_no_tfhers(tfhers: Any) -> None:
    """TFHE-rs interop carries its own parameters, which this check does not assess: allow only empty entries."""
    if tfhers is None:
        return
    names = ("input_types_per_func", "output_types_per_func", "input_shapes_per_func", "output_shapes_per_func")
    for name, per_func in fields(tfhers, "tfhers_specs", (), names).items():
        if not isinstance(per_func, dict) or any(
            not isinstance(entries, list) or any(e is not None for e in entries) for entries in per_func.values()
        ):
            raise malformed(f"tfhers_specs.{name}", "describes TFHE-rs values, whose parameters this check does not assess")
