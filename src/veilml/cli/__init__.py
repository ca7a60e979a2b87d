"""The ``veilml`` command line (also ``python -m veilml``).

- :mod:`.main`: the parser and ``main``; ``veilml worker`` (private LoRA's linear layers)
- :mod:`.model`: ``veilml compile | keygen | encrypt | run | decrypt | sign | serve`` (tree models)
- :mod:`.common`: what the commands share; :mod:`.demo`: the main job of ``scripts/demo.sh``

Imports stay inside the commands so that ``veilml --help`` answers at once.
"""

from veilml.cli.main import build_parser, main, serve

__all__ = ["build_parser", "main", "serve"]
