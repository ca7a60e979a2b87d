"""Compilation settings: the few knobs that matter, mapped onto ``concrete.fhe.Configuration``.

:class:`Configuration` is a frozen, keyword-only dataclass; :meth:`Configuration.to_concrete` builds
concrete's configuration from it, and :func:`check_gpu` tells whether ``device="cuda"`` can work here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from veilml.errors import VeilmlError

__all__ = ["Configuration", "GPUUnavailableError"]

#: settings that Configuration once had, and what to use instead
_REMOVED = {
    "compress_input_ciphertexts": (
        "concrete's input ciphertexts are compressed exactly when input_encryption='concrete' (concrete's "
        "seeded inputs); input_encryption='veilml', the default, sends veilml's seeded inputs instead "
        "(8 bytes per ciphertext). Choose input_encryption and drop compress_input_ciphertexts"
    ),
}


class GPUUnavailableError(VeilmlError, RuntimeError):
    """``device="cuda"`` was asked for but the installed concrete-python cannot use a GPU."""


@dataclass(frozen=True, kw_only=True)
class Configuration:
    """How a graph is compiled to a TFHE circuit (keyword arguments only).

    Attributes:
        p_error: error probability of each programmable bootstrap (None: derived from
            ``global_p_error``).
        global_p_error: error probability of a whole circuit run.
        rounding: ``"exact"`` rounding of low bits, or ``"approximate"`` (cheaper, off by one
            near rounding boundaries).
        loop_parallelize / dataflow_parallelize: concrete's CPU parallelism settings.
        device: ``"cpu"``, or ``"cuda"`` to run bootstraps on a GPU (needs a GPU build of
            concrete-python and a visible CUDA device).
        input_encryption: who encrypts the inputs. ``"veilml"`` (default): veilml's seeded
            inputs (:mod:`veilml.runtime.seeded_inputs`): one seed per row and 8 bytes per
            ciphertext on the wire, masks expanded with the processor's AES instructions on both
            sides (a thermometer row of breast cancer: 15 KiB, 6 ms to encrypt, against 45 KiB
            and 0.25 s through concrete's client); concrete compiles the circuit with
            uncompressed inputs, which only the server builds in memory. ``"concrete"``:
            concrete's own seeded, compressed input ciphertexts (a thermometer-encoded row of
            breast cancer would be 22 MiB uncompressed).
        compress_evaluation_keys: concrete's seeded, compressed evaluation keys on the wire.
        security_level: bits of security of the parameters (128 by default).
        insecure_key_cache: a directory where concrete caches keys across runs. Unsafe: for
            tests only; it turns on concrete's unsafe features.
        show_progress: concrete's progress bar while compiling.
        batch_size: rows per circuit call: the circuit takes ``batch_size`` encoded rows at once,
            so that its lookups spread over more cores (throughput); one row's latency does not
            drop. Bundles (``save``) hold one-row circuits only.
        extra: any other ``concrete.fhe.Configuration`` keyword, passed through unchanged.
    """

    p_error: float | None = None
    global_p_error: float | None = 1e-5
    rounding: Literal["exact", "approximate"] = "exact"
    loop_parallelize: bool = True
    dataflow_parallelize: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    input_encryption: Literal["veilml", "concrete"] = "veilml"
    compress_evaluation_keys: bool = True
    security_level: int = 128
    insecure_key_cache: str | Path | None = None
    show_progress: bool = False
    batch_size: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __new__(cls, *args: Any, **kwargs: Any) -> Configuration:
        """Refuse the removed settings by name, before the generic unexpected-keyword error."""
        _refuse_removed(kwargs)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.rounding not in ("exact", "approximate"):
            raise ValueError(f"rounding must be 'exact' or 'approximate', got {self.rounding!r}")
        for name in ("p_error", "global_p_error"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1) or None, got {value!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.input_encryption not in ("veilml", "concrete"):
            raise ValueError(f"input_encryption must be 'veilml' or 'concrete', got {self.input_encryption!r}")
        if self.security_level not in (128, 132):
            raise ValueError(f"security_level must be 128 or 132, got {self.security_level!r}")

    def fork(self, **changes: Any) -> Configuration:
        """A copy with some fields changed."""
        _refuse_removed(changes)
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown Configuration fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)

    def to_concrete(self) -> Any:
        """The equivalent ``concrete.fhe.Configuration`` (imports concrete)."""
        from concrete import fhe
        from concrete.fhe.compilation.configuration import SecurityLevel

        if self.device == "cuda":
            check_gpu()
        options: dict[str, Any] = {
            "p_error": self.p_error,
            "global_p_error": self.global_p_error,
            "rounding_exactness": fhe.Exactness.EXACT if self.rounding == "exact" else fhe.Exactness.APPROXIMATE,
            "loop_parallelize": self.loop_parallelize,
            "dataflow_parallelize": self.dataflow_parallelize,
            "use_gpu": self.device == "cuda",
            # veilml's seeded inputs are expanded by the server into concrete's uncompressed form
            "compress_input_ciphertexts": self.input_encryption == "concrete",
            "compress_evaluation_keys": self.compress_evaluation_keys,
            "security_level": SecurityLevel(self.security_level),
            "show_progress": self.show_progress,
            "fhe_simulation": True,
        }
        if self.insecure_key_cache is not None:
            options.update(
                enable_unsafe_features=True,
                use_insecure_key_cache=True,
                insecure_key_cache_location=str(self.insecure_key_cache),
            )
        options.update(self.extra)
        return fhe.Configuration(**options)


def _refuse_removed(keywords: Mapping[str, Any]) -> None:
    """Raise a TypeError that says what replaces a removed setting, if ``keywords`` name one."""
    for name in keywords:
        if name in _REMOVED:
            raise TypeError(f"Configuration has no setting {name!r} any more: {_REMOVED[name]}")


def check_gpu() -> None:
    """Raise :class:`GPUUnavailableError` unless concrete can run bootstraps on a GPU here."""
    from concrete import compiler

    if not compiler.check_gpu_enabled():
        raise GPUUnavailableError(
            "device='cuda' needs a GPU build of concrete-python, and the installed one has no GPU "
            "support; install the GPU wheel of concrete-python on a machine with CUDA, or use "
            "device='cpu'"
        )
    if not compiler.check_gpu_available():
        raise GPUUnavailableError(
            "device='cuda': concrete-python has GPU support but sees no CUDA device; check the "
            "driver and CUDA_VISIBLE_DEVICES, or use device='cpu'"
        )
