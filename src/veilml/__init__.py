"""veilml: machine learning on encrypted data, compiled to TFHE with concrete-python.

``import veilml`` is light: scikit-learn, concrete and torch load only when a model needs them.

Estimators pickle (``pickle``, ``joblib``; the circuit is compiled again on loading), ``estimator.save(path)``
writes a deployment bundle and ``veilml.load(path)`` reads it back; a fitted ``sklearn.pipeline.Pipeline`` of
scalers and imputers ending in a veilml estimator compiles with ``veilml.compile_pipeline(pipe, X)`` and saves
with ``veilml.save_pipeline(pipe, path)``, its preprocessing carried to clients as data.
"""

from __future__ import annotations

from veilml._lazy import lazy_exports

__version__ = "0.1.0"

from veilml.models.trees.families import FAMILIES as _TREE_FAMILIES

__all__ = [
    "Configuration",
    "VeilmlError",
    *_TREE_FAMILIES,
    "compile_pipeline",
    "from_onnx",
    "load",
    "save_pipeline",
    "__version__",
]

_LAZY = {
    **{name: "veilml.models" for name in _TREE_FAMILIES},
    "from_onnx": "veilml.models",
    "Configuration": "veilml.compiler",
    "VeilmlError": "veilml.errors",
    "load": "veilml.serving.loaded",  # a saved bundle read back: LoadedModel(path).predict(X, fhe=...)
    "compile_pipeline": "veilml.models.trees.pipeline",  # Pipeline(scalers..., veilml estimator)
    "save_pipeline": "veilml.models.trees.pipeline",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
