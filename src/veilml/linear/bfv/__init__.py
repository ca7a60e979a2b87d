"""The ``bfv`` encrypted-linear backend: exact ``x @ M`` by RLWE coefficient encoding, with SEAL's BFV.

The technique of Cheetah and BumbleBee: a block of rows and a block of weights become two polynomials
whose product holds many dot products in known coefficients, so one ciphertext-plaintext product
does the work of hundreds of multiply-adds, and the result goes back switched to a small modulus with
only its useful coefficients. SEAL (through the ``tenseal`` wheel's ``sealapi``, pinned in ``setup.cfg``)
encrypts, multiplies in NTT form and checks parameters; no evaluation key exists, the worker holds
public parameters only.

- :mod:`.backend`: :class:`BFVBackend`, :class:`BFVServer` (worker: validated, bounded work)
- :mod:`.product`: one validated request cut into units of work, one per row block
- :mod:`.cache`: the worker's encoded weights, within one budget per backend, never evicted
- :mod:`.session`: :class:`BFVSession` (client: fresh keys, seeded encryption, decryption)
- :mod:`.params`: parameters, the exactness bound and failure probability, the block planner
- :mod:`.encoding`: the coefficient encoding, modulus switching, bit packing
- :mod:`.crypto`: SEAL contexts, the client's key, seeded encryption, decryption in numpy
- :mod:`.seal_bytes`: SEAL's binary layouts, read and written by hand (small, commented, tested)
- :mod:`.wire`: setup, ciphertext and result messages
"""

from veilml.linear.bfv.backend import COST_BOUND, DEFAULT_MAX_RESULT_BYTES, BFVBackend, BFVServer
from veilml.linear.bfv.cache import DEFAULT_WEIGHT_CACHE_BYTES, WeightBudget, WeightCache
from veilml.linear.bfv.params import BFVParams, Plan, client_params, plan_product
from veilml.linear.bfv.session import BFVSession

__all__ = [
    "COST_BOUND",
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_WEIGHT_CACHE_BYTES",
    "BFVBackend",
    "BFVParams",
    "BFVServer",
    "BFVSession",
    "Plan",
    "WeightBudget",
    "WeightCache",
    "client_params",
    "plan_product",
]
