"""What a data owner checks of a client bundle before any key is made from it, beyond its manifest and specs.

A client bundle can come from a hostile server, so :class:`~veilml.serving.bundle.ModelClient` refuses one
whose specs, codec and manifest do not describe one veilml circuit (:func:`check_client_bundle`), or that is
not the bundle the data owner pinned (:func:`check_pinned`). The parameters' security and sizes are checked
by :func:`~veilml.runtime.security.check_client_specs`, signatures by :mod:`veilml.runtime.manifest`.
"""

from __future__ import annotations

import re
from typing import Any

from veilml.compiler.encodings import EncodingKind
from veilml.runtime.codec import ClientCodec
from veilml.runtime.envelope import specs_fingerprint
from veilml.runtime.manifest import ArtifactError
from veilml.runtime.security import InsecureParametersError, SpecsSummary

__all__ = ["HOSTILE_BUNDLE", "check_client_bundle", "check_pinned"]

#: how a refusal of a client bundle ends
HOSTILE_BUNDLE = "refuse this bundle: the server that sent it may be hostile, trying to read your data"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_pinned(fingerprint: str, expected: Any) -> None:
    """Refuse a client bundle whose fingerprint is not the ``expected`` one (a sha256 in hex)."""
    pinned = str(expected).strip().lower()
    if not _SHA256_HEX.fullmatch(pinned):
        raise ValueError(f"expected_fingerprint is a sha256 in hex (64 digits), got {expected!r}")
    if pinned != fingerprint:
        raise ArtifactError(
            f"the client bundle's fingerprint is {fingerprint}, not the expected {pinned}: it is not the bundle you "
            f"pinned; {HOSTILE_BUNDLE}"
        )


def _refuse(problem: str) -> InsecureParametersError:
    return InsecureParametersError(f"the client bundle is inconsistent: {problem}; {HOSTILE_BUNDLE}")


def check_client_bundle(manifest: dict[str, Any], specs: bytes, summary: SpecsSummary, codec: ClientCodec) -> None:
    """Refuse a client bundle whose specs, codec and manifest do not describe one veilml circuit:
    one encrypted input of the codec's encoded row (all of it, or a narrowed part, at a width that
    holds the encoded values) and one encrypted output (of the width the codec combines)."""
    from veilml.runtime.seeded_inputs import SeededInputError, seeded_input_spec

    if manifest.get("fingerprint") != specs_fingerprint(specs):
        raise _refuse("its manifest names another model than its client specs")
    size = codec.encoding.size
    for fact, value in (("n_features", codec.n_features), ("input_size", size)):
        if type(manifest.get(fact)) is not int or manifest[fact] != value:
            raise _refuse(f"its manifest says {fact} = {manifest.get(fact)!r} and its codec {value}")
    if len(summary.circuits) != 1:
        raise _refuse(f"its specs describe {len(summary.circuits)} circuits, a veilml model has one")
    ((inputs, outputs),) = summary.circuits.values()
    if len(inputs) != 1 or len(outputs) != 1:
        raise _refuse(f"its circuit has {len(inputs)} inputs and {len(outputs)} outputs, a veilml model has one of each")
    (gate,), (output,) = inputs, outputs
    if not gate.shape or any(d != 1 for d in gate.shape[:-1]):
        raise _refuse(f"its circuit's input has shape {gate.shape}, not one row")
    try:
        seeded = seeded_input_spec(specs)
    except SeededInputError as error:
        raise _refuse(f"its circuit's input cannot be encrypted here ({error})") from None
    if seeded is None and gate.shape[-1] != size:  # concrete encrypts exactly what the circuit takes
        raise _refuse(f"its circuit takes {gate.shape[-1]} values per row, and the codec encodes rows of {size}")
    if seeded is not None and not 1 <= gate.shape[-1] <= size:  # the circuit may read part of the row (narrowed)
        raise _refuse(f"its circuit takes {gate.shape[-1]} values per row, more than the codec's {size}")
    encoding = codec.encoding
    low, high = (encoding.qmin, encoding.qmax) if encoding.kind is EncodingKind.IDENTITY else (0, 1)
    width = gate.width
    if width is None or not 1 <= width <= 62:
        raise _refuse(f"its circuit's input is not concrete's native integer encoding of 1 to 62 bits (width {width})")
    fits = (-(2 ** (width - 1)) <= low and high < 2 ** (width - 1)) if gate.signed else (0 <= low and high < 2**width)
    if not fits:
        raise _refuse(f"its circuit's {width}-bit input cannot hold the encoded values [{low}, {high}]")
    combine = codec.output_combine
    if combine is not None and (combine.ndim != 2 or combine.shape[0] != output.count):
        raise _refuse(f"its codec combines {combine.shape[0]} output integers, and the circuit outputs {output.count}")
