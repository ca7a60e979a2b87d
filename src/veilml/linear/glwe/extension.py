"""Access to ``concrete-ml-extensions``, the library under the ``glwe`` backend.

API used (concrete-ml-extensions 0.2.0; the module-level wrappers dispatch to CUDA when
``is_cuda_enabled() and is_cuda_available()``, else to the CPU):

- ``default_params()`` -> JSON crypto parameters; ``MatmulCryptoParameters.deserialize(json)``;
- ``create_private_key(params)`` -> ``(PrivateKey, CompressionKey)`` (client only);
- ``encrypt_matrix(pkey=, crypto_params=, data=)`` with a C-contiguous 2-D ``uint64`` array;
- ``matrix_multiplication(encrypted_matrix, data, compression_key)`` with a 2-D ``uint64`` matrix;
- ``decrypt_matrix(result, private_key, params, n_valid_in_last_glwe)`` -> ``uint64`` (n, cols),
  already sign-extended from the accumulator width;
- every object has ``serialize()`` / ``deserialize(bytes)``; malformed bytes or mismatched inner
  dimensions raise a Rust ``PanicException`` (a ``BaseException``), turned into ``ValueError`` here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["call_fhext", "load_fhext", "use_cuda"]


def load_fhext() -> Any:
    try:
        import concrete_ml_extensions
    except ImportError as error:  # pragma: no cover - the tests skip without it
        raise ImportError(
            "the 'glwe' encrypted-linear backend needs concrete-ml-extensions: pip install concrete-ml-extensions"
        ) from error
    return concrete_ml_extensions


def use_cuda(fhext: Any) -> bool:
    return bool(fhext.is_cuda_enabled() and fhext.is_cuda_available())


def call_fhext(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into the extension, turning its Rust panics (BaseException) into a ValueError."""
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except (ValueError, TypeError):
        raise
    except BaseException as error:  # noqa: BLE001 - pyo3_runtime.PanicException derives from BaseException
        message = str(error).strip().splitlines()
        raise ValueError(f"concrete-ml-extensions could not {what}: {' '.join(message)[:300]}") from None
