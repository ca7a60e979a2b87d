"""Uniform affine quantizers: the one place where floats become integers and back.

``q = clip(round(x / scale + zero_point), qmin, qmax)`` and ``x ~= (q - zero_point) * scale``.
Scale and zero point are per tensor (``axis=None``) or per slice along one axis (per feature,
per channel, per row), calibrated from data (min/max) or from a known range.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from veilml.errors import VeilmlError

__all__ = [
    "MAX_N_BITS",
    "QuantizationRangeWarning",
    "UniformQuantizer",
    "dynamic_quantize",
    "one_range_warning",
    "RangeWarningScope",
]


#: the widest integer codes a quantizer read back may have (its codes are int64; a document may come
#: from an untrusted party, such as a client bundle sent by a server, and 2**n_bits is computed)
MAX_N_BITS = 62


class QuantizationRangeWarning(VeilmlError, UserWarning):
    """Values fell outside the calibrated range and were clipped.

    Also a ``UserWarning``: ``warnings`` filters on this class or on ``UserWarning`` apply to it. Its
    text is the same whatever was clipped, so that the ``"default"`` and ``"once"`` filters collapse
    repeats; ``count`` holds the number of clipped values. One public call of an estimator warns once
    (see :class:`RangeWarningScope`), at the line that made the call.
    """

    MESSAGE = (
        "values were outside the calibrated range and were clipped to it; calibrate on data that covers "
        "the values you predict on to avoid it (the number clipped is this warning's 'count')"
    )

    def __init__(self, message: str = MESSAGE, count: int = 0) -> None:
        super().__init__(message)
        self.count = int(count)


_SCOPE: ContextVar[RangeWarningScope | None] = ContextVar("veilml_range_warning_scope", default=None)
_VEILML_DIR = os.path.join(str(Path(__file__).resolve().parents[1]), "")
#: packages whose frames stand between a user's line and an estimator call (``cross_val_score``, ``Pipeline``)
_CALLER_PACKAGES = ("sklearn", "joblib")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by this function's caller point at the first frame
    outside veilml (and outside scikit-learn and joblib, which call estimators for the user)."""
    skipped = [_VEILML_DIR]
    for name in _CALLER_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            skipped.append(os.path.join(str(Path(module.__file__).resolve().parent), ""))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(tuple(skipped)):
        frame, level = frame.f_back, level + 1
    return level


def _warn_clipped(count: int) -> None:
    warnings.warn(QuantizationRangeWarning(count=count), stacklevel=_user_stacklevel())


class RangeWarningScope:
    """``with RangeWarningScope():``: one :class:`QuantizationRangeWarning` for everything clipped inside.

    Quantizers add their clipped values to the innermost scope instead of warning; the outermost scope
    warns once when it closes (not when the block raises), at the user's line. A scope opened inside
    another joins it; ``silent=True`` opens one that drops what is clipped inside it, for calls a user
    did not make (the fits and predictions of a cross-validation inside ``n_bits="auto"``).
    """

    def __init__(self, *, silent: bool = False) -> None:
        self.silent, self.count = silent, 0
        self._owner = False

    def __enter__(self) -> RangeWarningScope:
        self._owner = self.silent or _SCOPE.get() is None
        if self._owner:
            self._token = _SCOPE.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if not self._owner:
            return
        _SCOPE.reset(self._token)
        if kind is None and self.count and not self.silent:
            _warn_clipped(self.count)


_F = TypeVar("_F", bound=Callable[..., Any])


def one_range_warning(method: _F) -> _F:
    """Decorate a public method so that one call warns at most once (:class:`RangeWarningScope`)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with RangeWarningScope():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _integer_range(n_bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
    if signed:
        qmax = 2 ** (n_bits - 1) - 1
        # A symmetric signed grid drops the lowest code so that -qmax..qmax is balanced.
        return (-qmax if symmetric else -qmax - 1), qmax
    return 0, 2**n_bits - 1


@dataclass(frozen=True, eq=False)
class UniformQuantizer:
    """A fitted uniform affine quantizer.

    Attributes:
        n_bits: number of bits of the integer codes.
        signed: codes in ``[-2**(n-1), 2**(n-1) - 1]`` if True, else ``[0, 2**n - 1]``.
        scale: float array, one value per slice along ``axis`` (a scalar array if ``axis`` is None).
        zero_point: array of the same shape as ``scale``; integer (so that 0.0 is exactly on
            the grid) except for grids placed on purpose between known values, such as a tree's
            thresholds.
        axis: the axis that carries the per-slice parameters, or None for per-tensor.
        symmetric: zero point is 0 and the signed grid is balanced.
    """

    n_bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    symmetric: bool = False

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_range(
        cls,
        low: Any,
        high: Any,
        n_bits: int,
        *,
        signed: bool = False,
        symmetric: bool = False,
        axis: int | None = None,
    ) -> UniformQuantizer:
        """Quantizer whose grid spans ``[low, high]`` (arrays give one grid per slice of ``axis``)."""
        if not isinstance(n_bits, (int, np.integer)) or n_bits < 1:
            raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
        if symmetric and not signed and n_bits < 2:
            raise ValueError("a symmetric quantizer needs n_bits >= 2")
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("cannot calibrate a quantizer on NaN or infinite values")
        if np.any(high < low):
            raise ValueError("quantizer range has high < low")
        qmin, qmax = _integer_range(int(n_bits), signed, symmetric)
        if symmetric:
            amax = np.maximum(np.abs(low), np.abs(high))
            scale = amax / qmax
            scale = np.where(scale > 0, scale, 1.0)
            zero_point = np.zeros_like(scale, dtype=np.int64)
        else:
            width = high - low
            # A constant slice gets a unit step that maps the constant exactly onto qmin.
            scale = np.where(width > 0, width / (qmax - qmin), np.maximum(np.abs(low), 1.0))
            zero_point = (qmin - np.round(low / scale)).astype(np.int64)
        return cls(int(n_bits), bool(signed), scale, zero_point, axis, bool(symmetric))

    @classmethod
    def calibrate(
        cls,
        data: Any,
        n_bits: int,
        *,
        signed: bool = False,
        symmetric: bool = False,
        axis: int | None = None,
    ) -> UniformQuantizer:
        """Quantizer calibrated on the min/max of ``data`` (per slice along ``axis`` if given)."""
        data = np.asarray(data, dtype=np.float64)
        if data.size == 0:
            raise ValueError("cannot calibrate a quantizer on an empty array")
        reduce = None if axis is None else tuple(i for i in range(data.ndim) if i != axis % data.ndim)
        return cls.from_range(
            np.min(data, axis=reduce),
            np.max(data, axis=reduce),
            n_bits,
            signed=signed,
            symmetric=symmetric,
            axis=axis,
        )

    @classmethod
    def from_cut_points(cls, cuts: list[Any], n_bits: int, *, axis: int = 1) -> UniformQuantizer:
        """Unsigned per-slice grids whose bucket boundaries fall on, or next to, given cut points.

        ``cuts[i]`` are the values where slice ``i`` is compared (a tree's thresholds on feature
        ``i``). When every cut sits on a boundary between two codes, comparing codes is exactly
        comparing values; the grid's step is chosen to place the inner cuts as close to boundaries
        as ``n_bits`` allows. The zero point is then fractional.
        """
        scales, zero_points = zip(*(_grid_for_cuts(np.unique(np.asarray(c, dtype=np.float64)), n_bits) for c in cuts))
        return cls(int(n_bits), False, np.asarray(scales), np.asarray(zero_points), axis)

    # ----------------------------------------------------------------------------------- using
    @property
    def qmin(self) -> int:
        return _integer_range(self.n_bits, self.signed, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return _integer_range(self.n_bits, self.signed, self.symmetric)[1]

    def _broadcast(self, values: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None or values.ndim == 0:
            return values
        shape = [1] * ndim
        shape[self.axis % ndim] = -1
        return values.reshape(shape)

    def quantize(self, x: Any, *, warn: bool = True) -> np.ndarray:
        """Integer codes of ``x`` (int64), clipped to the grid; warns when anything was clipped (inside a
        :class:`RangeWarningScope`, the scope warns once for all its calls)."""
        x = np.asarray(x, dtype=np.float64)
        scale = self._broadcast(self.scale, x.ndim)
        zero_point = self._broadcast(self.zero_point, x.ndim)
        q = np.round(x / scale + zero_point)
        clipped = np.count_nonzero((q < self.qmin) | (q > self.qmax))
        if clipped and warn:
            scope = _SCOPE.get()
            if scope is None:
                _warn_clipped(int(clipped))
            else:  # the scope's owner warns once, at its end
                scope.count += int(clipped)
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: Any) -> np.ndarray:
        """Float values of integer codes ``q``."""
        q = np.asarray(q, dtype=np.float64)
        scale = self._broadcast(self.scale, q.ndim)
        zero_point = self._broadcast(self.zero_point, q.ndim)
        return (q - zero_point) * scale

    # ----------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (arrays as lists)."""
        return {
            "n_bits": self.n_bits,
            "signed": self.signed,
            "scale": np.asarray(self.scale).tolist(),
            "zero_point": np.asarray(self.zero_point).tolist(),
            "axis": self.axis,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UniformQuantizer:
        """The quantizer of :meth:`to_dict`'s document, checked: its codes fit in int64 and its scale and
        zero point are one value, or one per slice along ``axis``."""
        n_bits, axis = d["n_bits"], d["axis"]
        if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= MAX_N_BITS:
            raise ValueError(f"a quantizer's n_bits must be an integer in [1, {MAX_N_BITS}], got {n_bits!r}")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
            raise ValueError(f"a quantizer's axis must be an integer or None, got {axis!r}")
        scale = np.asarray(d["scale"], dtype=np.float64)
        zero_point = np.asarray(d["zero_point"], dtype=np.float64)
        if scale.shape != zero_point.shape or scale.ndim > 1:
            raise ValueError(
                f"a quantizer's scale and zero point must be two scalars or two vectors of one length, got shapes "
                f"{scale.shape} and {zero_point.shape}"
            )
        return cls(
            int(n_bits),
            bool(d["signed"]),
            scale,
            _as_integers_if_whole(zero_point),
            None if axis is None else int(axis),
            bool(d.get("symmetric", False)),
        )

    def __repr__(self) -> str:
        where = "per-tensor" if self.axis is None else f"per-axis {self.axis} ({np.size(self.scale)})"
        kind = "signed" if self.signed else "unsigned"
        return f"UniformQuantizer({self.n_bits} bits, {kind}, {where})"


def _grid_for_cuts(cuts: np.ndarray, n_bits: int) -> tuple[float, float]:
    """(scale, zero_point) putting cuts[0] and cuts[-1] on code boundaries, inner cuts nearest."""
    levels = 2**n_bits
    if not np.all(np.isfinite(cuts)):
        raise ValueError("cut points must be finite")
    if cuts.size < 2:  # zero or one cut: any grid is exact; centre the cut
        scale = max(abs(float(cuts[0])) if cuts.size else 1.0, 1e-12) / levels
        return scale, (levels - 1) / 2 - (float(cuts[0]) / scale if cuts.size else 0.0)
    span = float(cuts[-1] - cuts[0])
    best: tuple[tuple[bool, float], int] | None = None
    for steps in range(cuts.size - 1, levels - 1):  # steps between the first and last cut
        position = (cuts - cuts[0]) * (steps / span)
        distinct = np.unique(np.round(position)).size == cuts.size
        miss = float(np.max(np.abs(position - np.round(position)))) * span / steps
        key = (not distinct, miss)
        if best is None or key < best[0]:
            best = (key, steps)
    steps = best[1]
    scale = span / steps
    first_boundary = (levels - 2 - steps) // 2 + 0.5  # centred, at least half a code inside
    return scale, first_boundary - float(cuts[0]) / scale


def _as_integers_if_whole(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64) if np.all(values == np.round(values)) else values


def dynamic_quantize(
    x: Any, n_bits: int = 8, *, axis: int = 0, signed: bool = True, symmetric: bool = False
) -> tuple[np.ndarray, UniformQuantizer]:
    """Quantize ``x`` with parameters computed from ``x`` itself, one grid per slice of ``axis``.

    This is per-row (per-token) dynamic quantization when ``axis=0`` on a 2-D activation.
    """
    quantizer = UniformQuantizer.calibrate(x, n_bits, signed=signed, symmetric=symmetric, axis=axis)
    return quantizer.quantize(x, warn=False), quantizer
