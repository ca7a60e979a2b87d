"""Keys, encryption, execution and decryption of compiled models: the one FHE runtime of both workloads.

The client side (:class:`FHEClient`, the only holder of secret keys) and the evaluation side
(:class:`FHEServer`) are separate objects that exchange bytes:

- :mod:`.envelope`: envelopes, and the one framing of lists of byte strings (batches: tree rows, and
  the frames of :mod:`veilml.linear`'s messages)
- :mod:`.security` (with :mod:`.specs_reading`): the client's check of a server's parameters
- :mod:`.seeded_inputs`, :mod:`.validation`: seeded inputs, payload layouts
- :mod:`.circuits`, :mod:`.manifest`, :mod:`.private_files`, :mod:`.lru`: the circuit cache, artifact
  manifests, files that hold secrets, the one LRU cache

Deployment over HTTP (bundles, ``veilml serve``, :class:`~veilml.serving.RemoteModel`, the HTTP kit and
client) is :mod:`veilml.serving`, one layer up; encrypted linear layers are :mod:`veilml.linear`, above it.

Names load on first use, so importing a submodule does not import numpy and concrete's wrappers.
"""

from __future__ import annotations

from veilml._lazy import lazy_exports

_EXPORTS = {
    "FHEClient": "client",
    "write_private_file": "private_files",
    "FHEModel": "model",
    "FHE_MODES": "model",
    "NotCompiledError": "model",
    "FHEServer": "server",
    "ClientCodec": "codec",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
