"""The ``bfv-seal`` encrypted-linear backend: the ``bfv`` technique with Microsoft SEAL's BFV (through ``tenseal``).

The same coefficient encoding, exactness bound and block planner as the default ``bfv`` backend
(:mod:`veilml.linear.bfv`), computed with SEAL through ``tenseal``'s ``sealapi`` (pinned in ``setup.cfg``):
one 54-bit prime, SEAL's seeded symmetric encryption, plaintexts in NTT form. It is exact but slow,
dominated by SEAL's per-call overhead; it stays selectable (``backend="bfv-seal"``) so that benchmarks can
compare both engines in one run. Its wire formats are ``veilml-bfv-*/1``.

- :mod:`.backend`: :class:`SealBFVBackend`, :class:`SealBFVServer` (worker: validated, bounded work)
- :mod:`.product`: one validated request cut into units of work, one per row block
- :mod:`.session`: :class:`SealBFVSession` (client: fresh keys, seeded encryption, decryption)
- :mod:`.params`: SEAL's parameters, its costs for the planner, its formats
- :mod:`.crypto`: SEAL contexts, the client's key, seeded encryption, decryption in numpy
- :mod:`veilml.runtime.seal_bytes`: SEAL's binary layouts, read and written by hand (shared with the batched trees path)
"""

from veilml.linear.bfv.seal.backend import COST_BOUND, DEFAULT_MAX_RESULT_BYTES, SealBFVBackend, SealBFVServer
from veilml.linear.bfv.seal.params import BFVParams, client_params
from veilml.linear.bfv.seal.session import SealBFVSession

__all__ = [
    "COST_BOUND",
    "DEFAULT_MAX_RESULT_BYTES",
    "BFVParams",
    "SealBFVBackend",
    "SealBFVServer",
    "SealBFVSession",
    "client_params",
]
