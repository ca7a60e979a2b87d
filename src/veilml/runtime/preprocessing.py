"""Numeric preprocessing that a client applies to raw rows before quantizing them, stored as plain data.

A scikit-learn ``Pipeline`` of scalers and imputers before a veilml estimator
(:func:`veilml.compile_pipeline`, :func:`veilml.save_pipeline`) becomes a :class:`FeaturePreprocessing`: a
list of column-wise steps over the whole row, each with one value per column, written to the client bundle
as ``preprocessing.json`` (JSON arrays, never a pickle) and applied by
:class:`~veilml.serving.ModelClient`, :class:`~veilml.serving.RemoteModel` and :func:`veilml.load`'s model.

Steps (``null`` in an array: nothing to do on that column):

- ``select``: ``columns`` (a ColumnTransformer's order, dropped columns left out)
- ``impute``: ``fill`` where a value is missing (``missing``: null for NaN, or a number)
- ``center_scale``: ``(x - center) / scale`` (StandardScaler, RobustScaler, MaxAbsScaler)
- ``scale_shift``: ``x * scale + shift``, then clipped to ``[low, high]`` (MinMaxScaler)

Each step computes what its scikit-learn transformer computes, in the same order of floating-point
operations, so the rows quantized here are the rows the pipeline hands its estimator. A bundle may come
from a hostile server: :meth:`FeaturePreprocessing.from_json` bounds and checks every value (what it could
change is the client's own rows before encryption; nothing leaves the client unencrypted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.runtime.data_checks import check_feature_names, check_X

__all__ = ["FORMAT", "MAX_COLUMNS", "MAX_STEPS", "FeaturePreprocessing", "Step"]

FORMAT = "veilml-preprocessing"
MAX_STEPS = 256  #: steps a preprocessing.json may hold
MAX_COLUMNS = 1 << 16  #: columns a step may have
_VALUES = {  # each kind's per-column arrays, and whether null is allowed in them
    "select": {"columns": False},
    "impute": {"fill": True},
    "center_scale": {"center": False, "scale": False},
    "scale_shift": {"scale": False, "shift": False, "low": True, "high": True},
}


@dataclass(frozen=True, eq=False)
class Step:
    """One column-wise step: its ``kind`` (a key of the module's table) and its per-column ``values``."""

    kind: str
    values: dict[str, np.ndarray]
    missing: float | None = None  # impute: the value that marks a missing entry (None: NaN)

    def width_in(self, width: int) -> int:
        """The row width this step outputs given ``width`` (select picks columns, others keep them)."""
        return len(self.values["columns"]) if self.kind == "select" else width

    def apply(self, X: np.ndarray) -> np.ndarray:
        """This step on rows ``X`` (a float array of this process's own, changed in place where it can be, in its
        own dtype as scikit-learn does)."""
        v = self.values
        if self.kind == "select":
            return X[:, v["columns"]]
        if self.kind == "impute":
            mask = np.isnan(X) if self.missing is None else X == self.missing
            mask &= ~np.isnan(v["fill"])  # a null fill leaves its column as it is
            X[mask] = np.broadcast_to(v["fill"], X.shape)[mask]
        elif self.kind == "center_scale":
            X -= v["center"]
            X /= v["scale"]
        else:
            X *= v["scale"]
            X += v["shift"]
            np.clip(X, v["low"], v["high"], out=X)
        return X

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for name, nullable in _VALUES[self.kind].items():
            values = self.values[name]
            d[name] = [int(c) for c in values] if not nullable and self.kind == "select" else _floats(values)
        if self.kind == "impute":
            d["missing"] = self.missing
        return d

    @classmethod
    def from_dict(cls, d: Any, width: int) -> Step:
        if not isinstance(d, dict) or d.get("kind") not in _VALUES:
            raise ValueError(f"a step is an object whose kind is one of {sorted(_VALUES)}")
        kind = d["kind"]
        unknown = sorted(set(d) - {"kind", "missing", *_VALUES[kind]})
        if unknown:
            raise ValueError(f"a {kind} step has unknown entries {unknown}")
        values = {}
        for name, nullable in _VALUES[kind].items():
            raw = d.get(name)
            if not isinstance(raw, list) or not 0 < len(raw) <= MAX_COLUMNS:
                raise ValueError(f"{kind}.{name} must be a list of 1 to {MAX_COLUMNS} values")
            if kind == "select":
                if not all(type(c) is int and 0 <= c < width for c in raw):
                    raise ValueError(f"select.columns must be column indices below the row width {width}")
                values[name] = np.asarray(raw, dtype=np.int64)
                continue
            if len(raw) != width or not all(type(x) in (int, float) or (nullable and x is None) for x in raw):
                raise ValueError(f"{kind}.{name} must hold {width} numbers" + (" or nulls" if nullable else ""))
            if not all(x is None or np.isfinite(x) for x in raw):  # Python's json reads NaN and Infinity
                raise ValueError(f"{kind}.{name} must hold finite numbers")
            values[name] = _unfloats(raw, name)
        if kind == "center_scale" and (values["scale"] == 0).any():
            raise ValueError("center_scale.scale must not be 0")
        missing = d.get("missing")
        if missing is not None and (type(missing) not in (int, float) or not np.isfinite(missing)):
            raise ValueError("impute.missing must be null (NaN) or a finite number")
        return cls(kind, values, None if missing is None else float(missing))


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(x) or np.isinf(x) else float(x) for x in values]


def _unfloats(raw: list[Any], name: str) -> np.ndarray:
    """Floats of JSON values; a null is NaN (no fill), or an unbounded side (-inf low, +inf high)."""
    empty = -np.inf if name == "low" else np.inf if name == "high" else np.nan
    return np.asarray([empty if x is None else float(x) for x in raw], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class FeaturePreprocessing:
    """Column-wise steps from raw rows of ``n_features_in`` columns (named ``feature_names``, if the
    pipeline was fitted on a frame) to the rows the model quantizes."""

    n_features_in: int
    steps: tuple[Step, ...]
    feature_names: tuple[str, ...] | None = None

    @property
    def n_features_out(self) -> int:
        width = self.n_features_in
        for step in self.steps:
            width = step.width_in(width)
        return width

    def transform(self, X: Any, who: str = "ModelClient") -> np.ndarray:
        """The model's rows of raw rows ``X`` (names checked as scikit-learn does, missing values allowed),
        checked finite (:func:`~veilml.runtime.data_checks.check_X`)."""
        check_feature_names(X, self.feature_names, who)
        raw = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)
        if raw.dtype.kind not in "biuf" or raw.ndim != 2 or raw.shape[1] != self.n_features_in:
            return check_X(X, self.n_features_in, who)  # its clear error (a missing value reaches here as NaN only)
        rows = raw.astype(raw.dtype if raw.dtype.kind == "f" else np.float64)  # float32 stays float32, as in sklearn
        for step in self.steps:
            rows = step.apply(rows)
        return check_X(rows, self.n_features_out, who)

    def to_json(self) -> str:
        document = {
            "format": FORMAT,
            "version": 1,
            "n_features_in": self.n_features_in,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "steps": [step.to_dict() for step in self.steps],
        }
        return json.dumps(document, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeaturePreprocessing:
        """Read :meth:`to_json`'s document; anything else raises ``ValueError`` naming what is wrong."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ValueError(f"not a veilml preprocessing: invalid JSON ({error})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != 1:
            raise ValueError(f"not a veilml preprocessing: expected a JSON object of format {FORMAT!r}, version 1")
        n, names, steps = d.get("n_features_in"), d.get("feature_names"), d.get("steps")
        if type(n) is not int or not 0 < n <= MAX_COLUMNS:
            raise ValueError(f"n_features_in must be an integer from 1 to {MAX_COLUMNS}")
        if names is not None and (not isinstance(names, list) or len(names) != n or not all(isinstance(s, str) for s in names)):
            raise ValueError(f"feature_names must be null or {n} strings")
        if not isinstance(steps, list) or len(steps) > MAX_STEPS:
            raise ValueError(f"steps must be a list of at most {MAX_STEPS} steps")
        parsed, width = [], n
        for step in steps:
            parsed.append(Step.from_dict(step, width))
            width = parsed[-1].width_in(width)
        return cls(n, tuple(parsed), None if names is None else tuple(names))
