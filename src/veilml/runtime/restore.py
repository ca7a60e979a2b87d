"""A compiled model brought back from plain data: its circuit compiled again, and proven to be the same circuit.

concrete's circuits and keys live in native memory and cannot be pickled, and a saved ``server.zip`` runs
encrypted rows but does not simulate them. What determines a veilml circuit is plain data: the integer graph
and the :class:`~veilml.compiler.Configuration`. Every value of the graph is hinted with the bit width of its
declared input ranges (:func:`~veilml.compiler.lowering.to_concrete_function`), so concrete compiles the same
circuit whatever the inputset: :func:`recompile` compiles from the declared ranges alone, and
checks the sha256 of the new client specs against the one recorded when the model was first compiled (the
circuit cache relies on the same fact, :mod:`veilml.runtime.circuits`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import fields
from typing import Any

import numpy as np

from veilml.compiler import Configuration
from veilml.errors import VeilmlError
from veilml.runtime.envelope import specs_fingerprint
from veilml.runtime.model import FHEModel

__all__ = ["CircuitChangedWarning", "configuration_from_json", "configuration_to_json", "recompile", "specs_of"]

#: fields of a Configuration that say where or how verbosely it compiles, not what circuit comes out
_LOCAL_FIELDS = ("insecure_key_cache", "show_progress")


class CircuitChangedWarning(VeilmlError, UserWarning):
    """A model compiled again gave another circuit than the one recorded (another concrete-python, most likely)."""


def specs_of(circuit: Any) -> bytes:
    """The serialized public client specs of a concrete circuit."""
    raw = circuit.client.specs.serialize()
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def recompile(fhe_model: FHEModel, configuration: Configuration, fingerprint: str | None = None) -> FHEModel:
    """Compile ``fhe_model``'s graph again with ``configuration``, from its declared input ranges alone.

    ``fingerprint``: the sha256 of the client specs it had (:func:`~veilml.runtime.envelope.specs_fingerprint`);
    another circuit warns with :class:`CircuitChangedWarning` (its keys and ciphertexts are not the old
    one's, and ``simulate`` may differ within the configured error probability).
    """
    from veilml.compiler import compile_graph

    empty = np.zeros((0, fhe_model.codec.encoding.size), dtype=np.int64)
    fhe_model.compiled = compile_graph(fhe_model.graph, [empty], configuration)
    fhe_model._client = fhe_model._server = None
    if fingerprint is not None and specs_fingerprint(specs_of(fhe_model.compiled.circuit)) != fingerprint:
        warnings.warn(
            "the model was compiled again and concrete gave another circuit than the one saved (another "
            "concrete-python release?): keys made for the old circuit do not fit it; save the model again",
            CircuitChangedWarning,
            stacklevel=3,
        )
    return fhe_model


def configuration_to_json(configuration: Configuration) -> str:
    """What of ``configuration`` decides the circuit, as JSON (not the key cache or the progress bar; ``extra``
    only when it is JSON data)."""
    data = {f.name: getattr(configuration, f.name) for f in fields(configuration) if f.name not in _LOCAL_FIELDS}
    data["extra"] = dict(configuration.extra)
    try:
        return json.dumps(data, indent=1, sort_keys=True)
    except TypeError:
        data.pop("extra")  # a concrete object in extra: the circuit check on loading tells if it mattered
        return json.dumps(data, indent=1, sort_keys=True)


def configuration_from_json(text: str | bytes, **local: Any) -> Configuration:
    """The Configuration :func:`configuration_to_json` wrote; ``local``: the fields it leaves out (a key cache)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a veilml configuration: expected a JSON object")
    known = {f.name for f in fields(Configuration)} - set(_LOCAL_FIELDS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"not a veilml configuration: unknown fields {unknown}; save the model again")
    return Configuration(**data, **local)
