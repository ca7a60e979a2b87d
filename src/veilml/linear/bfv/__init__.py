"""The ``bfv`` encrypted-linear backend: exact ``x @ M`` by RLWE coefficient encoding, computed by veilml's own kernels.

The technique of Cheetah and BumbleBee: a block of rows and a block of weights become two polynomials
whose product holds many dot products in known coefficients, so one ciphertext-plaintext product
does the work of hundreds of multiply-adds, and the result goes back switched to a small modulus with
only its useful coefficients. The default engine (backend ``bfv``) computes in RNS form modulo two 27-bit
primes with numba kernels (or torch ones, for CUDA): the client encrypts and decrypts every ciphertext of a
request at once, the worker transforms, multiplies slot by slot (small GEMMs), transforms back and switches.
No evaluation key exists: the worker holds public parameters only. The SEAL engine (backend ``bfv-seal``,
:mod:`.seal`) computes the same products with Microsoft SEAL.

Shared by both engines:

- :mod:`.planner`: the exactness bound and failure probability, the block planner (each engine's costs)
- :mod:`.encoding`: the coefficient encoding, modulus switching, bit packing (numpy)
- :mod:`.cache`: the worker's encoded weights, within one budget per backend, never evicted
- :mod:`.wire`: setup, ciphertext and result messages
- :mod:`.server`: the worker's half (parameters and plan derived, never taken; result size bounded; one unit of
  work per row block, the deadline checked between units; the weight cache within its budget)

The ``bfv`` engine:

- :mod:`.backend`: :class:`BFVBackend`, :class:`BFVServer` (worker: validated, bounded work)
- :mod:`.product`: one validated request cut into units of work, one per row block
- :mod:`.session`: :class:`BFVSession` (client: a fresh secret per session, batched encryption and decryption)
- :mod:`.keys`: the client's secret key, encryption and decryption of arrays of ciphertexts
- :mod:`.params`: parameters (q = p1 p2), formats, the planner's costs; :mod:`.ntt`: transform tables
- :mod:`.prg`: uniform polynomials expanded from a seed (AES-256-CTR), the client's noise and secret
- :mod:`.kernels` (numba), :mod:`.kernels_torch` (torch), :mod:`.reference` (numpy, for the tests)
- :mod:`.ops`: the array operations of one request, on either kernel set; :mod:`.threads`: their threads

Nothing here imports numba or torch until a product or a key needs them.
"""

from veilml._lazy import lazy_exports

_EXPORTS = {
    "COST_BOUND": "backend",
    "DEFAULT_MAX_RESULT_BYTES": "backend",
    "DEFAULT_WEIGHT_CACHE_BYTES": "cache",
    "BFVBackend": "backend",
    "BFVParams": "params",
    "BFVServer": "backend",
    "BFVSession": "session",
    "Plan": "planner",
    "WeightBudget": "cache",
    "WeightCache": "cache",
    "client_params": "params",
    "plan_product": "planner",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, missing="the bfv extra: pip install 'veilml[bfv]'")
__all__ = sorted(_EXPORTS)
