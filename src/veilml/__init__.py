"""veilml: machine learning on encrypted data, compiled to TFHE with concrete-python.

``import veilml`` is light: scikit-learn, concrete and torch load only when a model needs them.
"""

from __future__ import annotations

from veilml._lazy import lazy_exports

__version__ = "0.1.0"

from veilml.models.trees.families import FAMILIES as _TREE_FAMILIES

__all__ = ["Configuration", "VeilmlError", *_TREE_FAMILIES, "from_onnx", "__version__"]

_LAZY = {
    **{name: "veilml.models" for name in _TREE_FAMILIES},
    "from_onnx": "veilml.models",
    "Configuration": "veilml.compiler",
    "VeilmlError": "veilml.errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
