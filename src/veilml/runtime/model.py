"""A compiled model as the runtime sees it: pre-processing, one graph, post-processing.

``FHEModel`` is model-family agnostic: trees (and later LoRA layers) produce one, and every
execution mode goes through it, so ``disable``, ``simulate`` and ``execute`` see the very same
integers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from veilml.compiler import CompiledGraph, Configuration, Graph, InputEncoding, compile_graph, evaluate
from veilml.errors import VeilmlError
from veilml.quantization import UniformQuantizer
from veilml.runtime.client import FHEClient
from veilml.runtime.codec import ClientCodec
from veilml.runtime.progress import progress_bar
from veilml.runtime.server import FHEServer

__all__ = ["FHE_MODES", "FHEModel", "NotCompiledError"]

FHE_MODES = ("disable", "simulate", "execute")

logger = logging.getLogger("veilml.runtime")


class NotCompiledError(VeilmlError, ValueError, AttributeError):
    """An FHE mode was asked for before the model was compiled."""


@dataclass
class FHEModel:
    """A :class:`~veilml.runtime.codec.ClientCodec` (the client's plain-data steps around the
    circuit) and the integer graph; once compiled, its client and server.

    Every execution mode goes through the same codec, so ``disable``, ``simulate`` and ``execute``
    see the very same integers, and :func:`veilml.serving.bundle.save_bundle` writes the very same steps into the client bundle.
    """

    codec: ClientCodec
    graph: Graph
    compiled: CompiledGraph | None = None
    last_latencies: list[float] = field(default_factory=list)
    _client: FHEClient | None = field(default=None, repr=False)
    _server: FHEServer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.graph.inputs) != 1 or len(self.graph.outputs) != 1:
            raise ValueError("an FHEModel graph has exactly one input and one output")

    @property
    def encoding(self) -> InputEncoding:
        return self.codec.encoding

    @property
    def input_quantizer(self) -> UniformQuantizer:
        return self.codec.input_quantizer

    @property
    def output_combine(self) -> np.ndarray | None:
        return self.codec.output_combine

    def encode(self, X: np.ndarray) -> np.ndarray:
        """What the client encrypts for float rows ``X``: quantized, then encoded."""
        return self.codec.encode(X)

    def decode(self, integers: np.ndarray) -> np.ndarray:
        """Float outputs of the circuit's integer outputs."""
        return self.codec.decode(integers)

    # ----------------------------------------------------------------------------------- compile
    def compile(self, X: np.ndarray, configuration: Configuration | None = None) -> CompiledGraph:
        """Compile with an inputset made of the encoded, quantized rows of ``X``."""
        encoded = self.encode(X)
        self.compiled = compile_graph(self.graph, [encoded], configuration)
        self._client = self._server = None
        return self.compiled

    def _require_compiled(self, fhe: str) -> CompiledGraph:
        if self.compiled is None:
            raise NotCompiledError(f"fhe={fhe!r} needs a compiled model; call 'compile(X)' with representative data first")
        return self.compiled

    # ----------------------------------------------------------------------------------- sides
    def client(self) -> FHEClient:
        """The client of this compiled model (keys generated on first use, then kept)."""
        compiled = self._require_compiled("execute")
        if self._client is None:
            self._client = FHEClient(
                compiled.circuit.client.specs,
                self.codec,
                key_cache=compiled.configuration.insecure_key_cache,
            )
        return self._client

    def server(self) -> FHEServer:
        """The server of this compiled model: the circuit and its public client specs, no key."""
        compiled = self._require_compiled("execute")
        if self._server is None:
            self._server = FHEServer(
                compiled.circuit.server,
                compiled.circuit.client.specs,
                input_columns=compiled.input_columns,
                row_size=self.codec.encoding.size,
            )
        return self._server

    # ----------------------------------------------------------------------------------- run
    def run_integers(
        self, X: np.ndarray, fhe: Literal["disable", "simulate", "execute"] = "disable", *, progress: bool | None = None
    ) -> np.ndarray:
        """Integer outputs (n_samples, n_outputs) of float rows ``X`` in the given mode."""
        if fhe not in FHE_MODES:
            raise ValueError(f"fhe must be one of {FHE_MODES}, got {fhe!r}")
        encoded = self.encode(X)
        if fhe == "disable":
            return evaluate(self.graph, [encoded])[0]
        compiled = self._require_compiled(fhe)
        if fhe == "simulate":
            return compiled.simulate([encoded])[0]
        return self._execute(encoded, progress)

    def _execute(self, encoded: np.ndarray, progress: bool | None) -> np.ndarray:
        client, server = self.client(), self.server()
        if not client.has_keys:
            client.keygen(progress=progress)
        keys = client.evaluation_keys()
        compiled = self._require_compiled("execute")
        outputs, self.last_latencies = [], []
        unit = "row" if compiled.batch_size == 1 else f"batch of {compiled.batch_size}"
        # None: a bar on a terminal or in a notebook (runtime.progress); an INFO line with the time either way
        for call in progress_bar(compiled.calls(encoded), progress=progress, desc="FHE execute", unit=unit):
            start = time.perf_counter()
            result = server.run(client.encrypt_encoded(call), keys)
            outputs.append(client.decrypt_integers(result))
            self.last_latencies.append(time.perf_counter() - start)  # per call
        logger.info("FHE execute: %d row(s) in %.2f s", len(encoded), sum(self.last_latencies))
        if not outputs:
            return np.zeros((0, self.graph.nodes[self.graph.outputs[0]].size), np.int64)
        return compiled.uncall(outputs, len(encoded))

    def run(self, X: np.ndarray, fhe: Literal["disable", "simulate", "execute"] = "disable", **kwargs: Any) -> np.ndarray:
        """Dequantized outputs of float rows ``X``."""
        return self.decode(self.run_integers(X, fhe, **kwargs))
