"""A fitted scikit-learn ``Pipeline`` of numeric preprocessing and a veilml estimator, compiled and saved as one.

::

    pipe = make_pipeline(StandardScaler(), veilml.DecisionTreeClassifier(max_depth=3)).fit(X, y)
    veilml.compile_pipeline(pipe, X)          # compiles pipe[-1] on pipe[:-1].transform(X)
    pipe.predict(X_test, fhe="simulate")      # scikit-learn passes fhe= on to the estimator
    veilml.save_pipeline(pipe, "bundle")      # the client bundle carries the scalers as JSON arrays
    veilml.load("bundle").predict(X_test)     # raw rows in, as pipe.predict

:func:`preprocessing_of` turns the steps before the estimator into a
:class:`~veilml.runtime.preprocessing.FeaturePreprocessing` (per-feature offsets, scales and fill values,
never a pickle), which :class:`~veilml.serving.ModelClient` and :class:`~veilml.serving.RemoteModel` apply
to raw rows before quantizing them. :data:`SUPPORTED` lists what can be converted; anything else is refused
by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from veilml.errors import VeilmlError
from veilml.runtime.preprocessing import FeaturePreprocessing, Step

__all__ = ["SUPPORTED", "UnsupportedStepError", "compile_pipeline", "preprocessing_of", "save_pipeline"]

SUPPORTED = (
    "StandardScaler, MinMaxScaler, RobustScaler, MaxAbsScaler, SimpleImputer (strategy mean, median, most_frequent "
    "or constant, numeric, without add_indicator), a Pipeline of these, 'passthrough', and a ColumnTransformer of "
    "these with remainder 'passthrough' or 'drop'"
)


class UnsupportedStepError(VeilmlError, TypeError):
    """A pipeline step that veilml cannot carry to the client as data."""


def _refuse(step: Any, why: str = "") -> UnsupportedStepError:
    return UnsupportedStepError(
        f"cannot compile the pipeline step {step!r}{why}: a veilml pipeline supports {SUPPORTED}, then a veilml "
        "estimator; apply other transformations to X before the pipeline"
    )


def _estimator(pipe: Any) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    from veilml.models.trees.estimators.base import EncryptedEnsemble

    if not isinstance(pipe, Pipeline) or not isinstance(pipe[-1], EncryptedEnsemble):
        raise TypeError(f"expected a sklearn Pipeline whose last step is a veilml estimator, got {pipe!r}")
    check_is_fitted(pipe[-1])
    return pipe[-1]


def _steps(transformer: Any, width: int) -> Iterator[Step]:
    """The column-wise steps of one fitted transformer on rows of ``width`` columns."""
    from sklearn import preprocessing as skp
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    ones, zeros = np.ones(width), np.zeros(width)
    if transformer is None or (isinstance(transformer, str) and transformer == "passthrough"):
        return
    if isinstance(transformer, Pipeline):
        for _, step in transformer.steps:
            yield from _steps(step, width)
    elif isinstance(transformer, ColumnTransformer):
        yield from _column_steps(transformer, width)
    elif type(transformer) in (skp.StandardScaler, skp.RobustScaler, skp.MaxAbsScaler):
        center = {  # None where the scaler does not subtract (or divide), as scikit-learn's own transform
            skp.StandardScaler: lambda t: t.mean_ if t.with_mean else None,
            skp.RobustScaler: lambda t: t.center_,
            skp.MaxAbsScaler: lambda t: None,
        }[type(transformer)](transformer)
        scale = transformer.scale_
        values = {"center": zeros if center is None else center, "scale": ones if scale is None else scale}
        yield Step("center_scale", {k: np.asarray(v, dtype=np.float64) for k, v in values.items()})
    elif type(transformer) is skp.MinMaxScaler:
        low, high = (np.full(width, float(b)) for b in transformer.feature_range) if transformer.clip else (None, None)
        yield Step(
            "scale_shift",
            {
                "scale": np.asarray(transformer.scale_, np.float64),
                "shift": np.asarray(transformer.min_, np.float64),
                "low": np.full(width, -np.inf) if low is None else low,
                "high": np.full(width, np.inf) if high is None else high,
            },
        )
    elif type(transformer) is SimpleImputer:
        yield from _imputer_steps(transformer, width)
    else:
        raise _refuse(transformer)


def _imputer_steps(imputer: Any, width: int) -> Iterator[Step]:
    missing = imputer.missing_values
    if imputer.add_indicator:
        raise _refuse(imputer, " (add_indicator=True adds columns of missing-value flags)")
    if imputer.strategy not in ("mean", "median", "most_frequent", "constant") or callable(imputer.strategy):
        raise _refuse(imputer, f" (strategy {imputer.strategy!r})")
    try:  # strategy="constant" keeps its statistics as objects
        statistics = np.asarray(imputer.statistics_).astype(np.float64)
    except (TypeError, ValueError):
        statistics = None
    if statistics is None or isinstance(missing, bool) or not isinstance(missing, (int, float)):
        raise _refuse(imputer, " (non-numeric values)")
    nan = isinstance(missing, float) and np.isnan(missing)
    yield Step("impute", {"fill": np.where(np.isnan(statistics), np.nan, statistics)}, None if nan else float(missing))
    kept = np.flatnonzero(~np.isnan(statistics))
    if len(kept) < width and not imputer.keep_empty_features:  # scikit-learn drops the columns it could not fill
        yield Step("select", {"columns": kept})


def _identity_padded(steps: list[Step], start: int, width: int, total: int) -> Iterator[Step]:
    """Steps over ``width`` columns, widened to ``total`` columns that they leave as they are outside
    ``[start, start + width)``."""
    neutral = {"center": 0.0, "scale": 1.0, "shift": 0.0, "fill": np.nan, "low": -np.inf, "high": np.inf}
    for step in steps:
        values = {}
        for name, inner in step.values.items():
            full = np.full(total, neutral[name])
            full[start : start + width] = inner
            values[name] = full
        yield Step(step.kind, values, step.missing)


def _column_steps(columns: Any, width: int) -> Iterator[Step]:
    """A ColumnTransformer: its columns selected in output order, then each part's steps on its own columns."""
    indices = getattr(columns, "_transformer_to_input_indices", None)
    if indices is None:
        raise _refuse(columns, " (fitted by a scikit-learn without _transformer_to_input_indices)")
    order, parts = [], []
    for name, transformer, _ in columns.transformers_:
        selected = [int(i) for i in indices.get(name, [])]
        if (isinstance(transformer, str) and transformer == "drop") or not selected:
            continue
        steps = list(_steps(transformer, len(selected)))
        if any(step.kind == "select" for step in steps):
            raise _refuse(transformer, " (it drops columns inside a ColumnTransformer)")
        parts.append((len(order), len(selected), steps))
        order.extend(selected)
    yield Step("select", {"columns": np.asarray(order, dtype=np.int64)})
    for start, size, steps in parts:
        yield from _identity_padded(steps, start, size, len(order))


def preprocessing_of(pipe: Any) -> FeaturePreprocessing:
    """The steps of a fitted Pipeline before its veilml estimator, as data; raises
    :class:`UnsupportedStepError` naming a step that is not numeric, column-wise preprocessing."""
    estimator = _estimator(pipe)
    width = getattr(pipe, "n_features_in_", None)
    if width is None:
        raise ValueError(f"{pipe!r} has no n_features_in_: fit the pipeline first")
    steps: list[Step] = []
    current = int(width)
    for _, transformer in pipe.steps[:-1]:
        for step in _steps(transformer, current):
            steps.append(step)
            current = step.width_in(current)
    if current != estimator.n_features_in_:
        raise ValueError(
            f"the pipeline's preprocessing gives {current} features and its estimator expects {estimator.n_features_in_}"
        )
    names = getattr(pipe, "feature_names_in_", None)
    names = None if names is None else tuple(str(n) for n in names)
    return FeaturePreprocessing(int(width), tuple(steps), names)


def compile_pipeline(pipe: Any, X: Any, configuration: Any = None, **options: Any) -> Any:
    """Compile the veilml estimator at the end of a fitted Pipeline on ``X`` transformed by the steps before it;
    returns ``pipe``. The steps are checked first (:func:`preprocessing_of`): what :func:`save_pipeline` could not
    carry to clients is refused before anything is compiled. ``configuration``, ``options``: see ``compile``."""
    preprocessing_of(pipe)
    pipe[-1].compile(pipe[:-1].transform(X), configuration, **options)
    return pipe


def save_pipeline(pipe: Any, directory: Any, signing_key: Any = None) -> Any:
    """Write the bundle of a compiled Pipeline (see the estimator's ``save``); its client side also holds the
    preprocessing as ``preprocessing.json``, applied to raw rows by every client. Returns the directory."""
    return _estimator(pipe).save(directory, signing_key, preprocessing=preprocessing_of(pipe))
