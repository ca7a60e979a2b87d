"""Pickling compiled estimators (``pickle``, ``joblib``): the circuit is compiled again on loading.

concrete's circuit, client and keys are native objects that cannot be pickled. A pickle holds everything
else (the fitted library model, the quantizers, the integer graph, the compile :class:`~veilml.compiler.
Configuration` and the sha256 of the circuit's client specs); loading compiles the graph again
(:func:`veilml.runtime.restore.recompile`, under a second for small models, plus importing concrete) and
checks that concrete gave the very same circuit.

Why compile again rather than reload saved bytes: ``predict(X, fhe="simulate")`` needs concrete's whole
``Circuit`` (its simulator), which only compiling makes; a saved ``server.zip`` runs encrypted rows and
nothing else, and is a native library bound to one concrete release and platform. The circuit is
a function of the graph and the configuration alone, so the same circuit comes back, and with it the same
``disable`` and ``simulate`` predictions. Keys are never pickled: a secret key does not belong in a file
that is copied around, and ``fhe="execute"`` makes new ones on first use. For deployment, ``save()`` writes
a bundle, and :func:`veilml.load` reads one back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from veilml.runtime.envelope import specs_fingerprint
from veilml.runtime.restore import recompile, specs_of

__all__ = ["PicklableFHE"]

_CIRCUITS = "_veilml_circuits"  # (FHE model, configuration, client specs sha256) of each compiled circuit


class PicklableFHE:
    """``__getstate__``/``__setstate__`` of an estimator holding :class:`~veilml.runtime.FHEModel` objects."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_batch", None)  # the batched path's scorer (SEAL objects): made again on first use
        copies: dict[int, Any] = {}

        def bare(model: Any) -> Any:
            if id(model) not in copies:
                copies[id(model)] = replace(model, compiled=None, _client=None, _server=None, last_latencies=[])
            return copies[id(model)]

        circuits = []
        for name in ("fhe_model_", "_candidates"):
            if name not in state:
                continue
            models = [state[name]] if name == "fhe_model_" else [model for model, _ in state[name]]
            for model in models:
                if model.compiled is not None and id(model) not in copies:
                    fingerprint = specs_fingerprint(specs_of(model.compiled.circuit))
                    circuits.append((bare(model), model.compiled.configuration, fingerprint))
            state[name] = bare(state[name]) if name == "fhe_model_" else [(bare(m), low) for m, low in state[name]]
        state[_CIRCUITS] = circuits
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        circuits = state.pop(_CIRCUITS, [])
        super().__setstate__(state)  # type: ignore[misc]
        for model, configuration, fingerprint in circuits:
            recompile(model, configuration, fingerprint)
