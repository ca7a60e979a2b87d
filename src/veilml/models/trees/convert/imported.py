"""Tree ensembles imported from ONNX: estimators that predict but cannot be refit.

``from_onnx`` reads an ONNX-ML ``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor`` graph (as
written by skl2onnx or onnxmltools) and returns a fitted ``ImportedTreeClassifier`` or
``ImportedTreeRegressor`` with the same ``compile`` / ``predict(fhe=...)`` API as every tree family.
"""

from __future__ import annotations

from typing import Any

from veilml.models.trees.estimators.tasks import EncryptedClassifier, EncryptedRegressor

__all__ = ["ImportedTreeClassifier", "ImportedTreeRegressor", "from_onnx"]


class _Imported:
    def __init__(
        self, *, n_bits: int = 8, leaf_bits: int | None = None, encoding: str = "thermometer", leaf_lookups: str = "auto"
    ) -> None:
        self.n_bits = n_bits
        self.leaf_bits = leaf_bits
        self.encoding = encoding
        self.leaf_lookups = leaf_lookups


class ImportedTreeClassifier(_Imported, EncryptedClassifier):
    """An encrypted tree-ensemble classifier made by :func:`from_onnx` (``fit`` is not available)."""


class ImportedTreeRegressor(_Imported, EncryptedRegressor):
    """An encrypted tree-ensemble regressor made by :func:`from_onnx` (``fit`` is not available)."""


def from_onnx(model: Any, X: Any = None, n_bits: int = 8, **params: Any) -> ImportedTreeClassifier | ImportedTreeRegressor:
    """An encrypted estimator from an ONNX-ML tree ensemble (a path, bytes or an ``onnx.ModelProto``).

    ``X`` (optional) calibrates the input quantizer on data; without it, each feature's grid is
    placed on the model's own thresholds as in ``from_fitted`` (outermost ones exactly, inner ones
    within half a code).
    """
    from veilml.models.trees.convert.onnx import from_onnx as read_onnx

    ensemble = read_onnx(model)
    cls = ImportedTreeClassifier if ensemble.task == "classification" else ImportedTreeRegressor
    estimator = cls(n_bits=n_bits, **params)
    estimator._validate_params()
    if n_bits == "auto":
        raise ValueError("n_bits='auto' chooses bits while training; give from_onnx an integer n_bits")
    estimator._set_fitted_float(None, ensemble, X, n_bits, "the ONNX model")
    return estimator
