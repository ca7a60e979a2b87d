"""The ``veilml`` command line (also ``python -m veilml``).

- :mod:`.main`: the parser and ``main``; ``veilml worker`` (private LoRA's linear layers)
- :mod:`.model`: ``veilml compile | keygen | encrypt | run | decrypt | sign | serve`` (tree models), their
  arguments in :mod:`.arguments`; :mod:`.predict`: ``veilml predict URL``
- :mod:`.sources`: the model files ``compile`` reads (ONNX, XGBoost JSON/UBJ, LightGBM text, skops) and
  ``--n-bits auto``; :mod:`.tables`: the rows commands read (.npy, CSV with or without a header)
- :mod:`.common`: what the commands share; :mod:`.demo`: the main job of ``scripts/demo.sh``

Imports stay inside the commands, and only the command being run gets its arguments, so that ``veilml --help``,
``--version`` and argument errors answer at once.
"""

from veilml.cli.main import build_parser, main, serve

__all__ = ["build_parser", "main", "serve"]
