"""``veilml.load(path)``: a bundle written by ``save()`` (or :func:`veilml.save_pipeline`) read back into a model.

::

    model.save("bundle")
    again = veilml.load("bundle")
    again.predict(X, fhe="disable")   # the very integers of model.predict(X, fhe="disable")
    again.predict(X, fhe="simulate")  # the graph compiled again: the same circuit, checked by its fingerprint
    again.predict(X, fhe="execute")   # the bundle's own client and server (server.zip), keys in memory

Every part's manifest is checked before anything in it is read (a changed file raises
:class:`~veilml.runtime.manifest.ArtifactError` naming it), signatures too when ``trusted_key`` is given,
and the three parts must be of one model. A bundle from a Pipeline takes raw rows: its preprocessing is
applied first, as ``pipe.predict`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from veilml.runtime.codec import ClientCodec
from veilml.runtime.manifest import ArtifactError, check_manifest, read_artifact_file
from veilml.runtime.model import FHE_MODES, FHEModel
from veilml.runtime.preprocessing import FeaturePreprocessing
from veilml.serving.bundle_parts import CLIENT_FORMAT, MODEL_FORMAT, PREPROCESSING, SERVER_FORMAT

__all__ = ["LoadedModel", "load"]

_MAX_MODEL_FILE_BYTES = 256 * 2**20


def load(path: str | os.PathLike, *, trusted_key: Any = None) -> LoadedModel:
    """The model of a bundle directory written by an estimator's ``save`` (see :class:`LoadedModel`)."""
    return LoadedModel(path, trusted_key=trusted_key)


class LoadedModel:
    """A saved model: ``predict``, ``predict_proba``, ``decision_scores`` and ``predict_integers`` with
    ``fhe="disable" | "simulate" | "execute"``, as the estimator that saved it.

    ``disable`` evaluates the saved integer graph; ``simulate`` compiles it again with the saved configuration
    on first use (and warns if concrete gives another circuit than the bundle's); ``execute`` encrypts with
    the bundle's client side and runs its server side (``server.zip``), keys made in memory on first use.
    ``trusted_key``: the maker's Ed25519 public key; every part must then be signed with it.
    """

    def __init__(self, path: str | os.PathLike, *, trusted_key: Any = None) -> None:
        from veilml.compiler.serialize import graph_from_bytes
        from veilml.runtime.restore import configuration_from_json

        self.directory = Path(path)
        manifests = {}
        for part, fmt in (("client", CLIENT_FORMAT), ("server", SERVER_FORMAT), ("model", MODEL_FORMAT)):
            if not (self.directory / part / "manifest.json").exists():
                raise ArtifactError(
                    f"{self.directory} has no {part}/ part: give the directory an estimator's save() wrote (bundles "
                    "saved before veilml.load existed have no model/ part: save the model again)"
                )
            manifests[part] = check_manifest(self.directory / part, fmt, trusted_key=trusted_key)
        if len({m.get("fingerprint") for m in manifests.values()}) != 1:
            raise ArtifactError(f"the parts of {self.directory} are of different models; copy the whole bundle again")
        self.fingerprint = manifests["model"]["fingerprint"]
        client, model = self.directory / "client", self.directory / "model"
        codec = ClientCodec.from_json(self._read(client / "codec.json"))
        self.preprocessing = None
        if PREPROCESSING in manifests["client"]["files"]:
            self.preprocessing = FeaturePreprocessing.from_json(self._read(client / PREPROCESSING))
        self.fhe_model_ = FHEModel(codec, graph_from_bytes(self._read(model / "graph.zip")))
        self.configuration = configuration_from_json(self._read(model / "configuration.json"))
        self.n_features_in_ = codec.n_features if self.preprocessing is None else self.preprocessing.n_features_in
        if codec.output is not None and codec.output.task == "classification":
            self.classes_ = np.asarray(codec.output.classes)
        self._execution: tuple[Any, Any, str] | None = None

    @staticmethod
    def _read(path: Path) -> bytes:
        return read_artifact_file(path, _MAX_MODEL_FILE_BYTES, f"bundle's {path.name}")

    def _rows(self, X: Any) -> np.ndarray:
        if self.preprocessing is None:
            return self.fhe_model_.codec.check_rows(X, "LoadedModel")
        return self.preprocessing.transform(X, "LoadedModel")

    def predict_integers(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto") -> np.ndarray:
        """The circuit's integers for raw rows ``X`` (the exact oracle between modes)."""
        if fhe not in FHE_MODES:
            raise ValueError(f"fhe must be one of {FHE_MODES}, got {fhe!r}")
        if fhe_path not in ("auto", "tfhe"):
            raise ValueError(
                f"a loaded model runs the TFHE path, fhe_path must be 'auto' or 'tfhe', got {fhe_path!r}; the batched path "
                "is served by 'veilml serve' (RemoteModel)"
            )
        rows = self._rows(X)
        if fhe == "execute":
            return self._execute(rows)
        if fhe == "simulate" and self.fhe_model_.compiled is None:
            from veilml.runtime.restore import recompile

            recompile(self.fhe_model_, self.configuration, self.fingerprint)
        return self.fhe_model_.run_integers(rows, fhe)  # type: ignore[arg-type]

    def _execute(self, rows: np.ndarray) -> np.ndarray:
        """The bundle's own client and server, in this process."""
        from veilml.serving.bundle import ModelClient, ModelServer

        if self._execution is None:
            client, server = ModelClient(self.directory), ModelServer(self.directory)
            self._execution = (client, server, server.register(client.evaluation_keys()))
        client, server, key_id = self._execution
        chunks = [rows[i : i + client.max_rows] for i in range(0, len(rows), client.max_rows)]
        results = [client.decrypt_integers(server.run(client.encrypt_rows(c), key_id), rows=len(c)) for c in chunks]
        return np.concatenate(results) if results else np.zeros((0, 0), dtype=np.int64)

    def decision_scores(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto") -> np.ndarray:
        """Raw scores after decryption, before any post-transform: (n_samples, n_outputs)."""
        return self.fhe_model_.codec.decode(self.predict_integers(X, fhe, fhe_path=fhe_path))

    def predict_proba(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto") -> np.ndarray:
        """Class probabilities (classifiers), or the post-transformed scores."""
        return self.fhe_model_.codec.finish(self.decision_scores(X, fhe, fhe_path=fhe_path))

    def predict(self, X: Any, fhe: str = "disable", *, fhe_path: str = "auto") -> np.ndarray:
        """Labels (classifiers) or values (regressors, (n_samples,) for one output)."""
        return self.fhe_model_.codec.labels(self.decision_scores(X, fhe, fhe_path=fhe_path))

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.directory)!r}, fingerprint={self.fingerprint[:12]}...)"
