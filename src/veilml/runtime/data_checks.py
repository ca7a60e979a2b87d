"""Checks of the rows, targets and weights users pass (estimators and deployed clients): each error says what came in and how to fix it."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_X", "check_feature_names", "check_sample_weight", "check_y"]


def check_X(X: Any, n_features: int | None, who: str) -> np.ndarray:
    """A finite float64 (n_samples, n_features) array, or a clear error."""
    if hasattr(X, "to_numpy"):  # pandas / polars frames
        X = X.to_numpy()
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise TypeError(
            "Sparse data was passed, but dense data is required: call X.toarray() first "
            "(encrypted trees read every feature of every row anyway)"
        )
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError("Complex data not supported: pass the real part (X.real) or split it into two features")
    if X.dtype.kind not in "biuf":
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"X must be numeric, got dtype {X.dtype} ({error}); encode categorical or text "
                "columns as numbers first (for example with sklearn.preprocessing.OrdinalEncoder)"
            ) from None
    if X.ndim == 1:
        raise ValueError(
            f"{who} expects a 2-D array (n_samples, n_features), got a 1-D array of shape {X.shape}. "
            "Reshape your data: X.reshape(1, -1) for one sample, X.reshape(-1, 1) for one feature"
        )
    if X.ndim != 2:
        raise ValueError(f"{who} expects a 2-D array (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{who} got X with 0 sample(s) (shape={X.shape}); pass at least one row")
    if X.shape[1] == 0:
        raise ValueError(f"{who} got 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    X = X.astype(np.float64, copy=False)
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but {who} is expecting {n_features} features as input; "
            "pass the same columns, in the same order, as in fit"
        )
    if not np.all(np.isfinite(X)):
        nan_cols = sorted(set(np.where(np.isnan(X))[1].tolist()))
        inf_cols = sorted(set(np.where(np.isinf(X))[1].tolist()))
        if nan_cols:
            raise ValueError(
                f"X contains NaN in column(s) {nan_cols[:10]}; impute missing values first "
                "(for example with sklearn.impute.SimpleImputer)"
            )
        raise ValueError(f"X contains infinite values in column(s) {inf_cols[:10]}; replace or clip them first")
    return X


def check_feature_names(X: Any, feature_names: Any, who: str) -> None:
    """scikit-learn's check of the column names of ``X`` against those seen in fit.

    Reordered, missing or unknown columns raise scikit-learn's ``ValueError`` ("The feature names
    should match those that were passed during fit..."); an array without names after a fit on
    names, or the reverse, gets scikit-learn's ``UserWarning``. For places that hold names but are
    no estimator (a deployed client's codec): estimators call ``validate_data`` themselves.
    """
    from sklearn.utils.validation import _check_feature_names

    # scikit-learn's check reads the names from an estimator and names it by its class: a
    # stand-in named ``who`` carries them, so messages and warnings are scikit-learn's own
    names = None if feature_names is None else np.asarray(feature_names, dtype=object)
    fitted = type(who, (), {"feature_names_in_": names})()
    _check_feature_names(fitted, X, reset=False)


def check_y(y: Any) -> np.ndarray:
    """Targets as a 1-D array where they are one column (with scikit-learn's warning)."""
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise ValueError("this estimator requires y to be passed, but the target y is None")
    y = np.asarray(y)
    return column_or_1d(y, warn=True) if y.ndim == 2 and y.shape[1] == 1 else y


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
    """Finite, non-negative weights, one per row and not all zero (or None)."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights))
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight.shape == {weights.shape}, expected {(n_samples,)}: one weight per row of X")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("Negative values or NaN in sample_weight: weights must be finite and >= 0")
    if not np.any(weights > 0):
        raise ValueError("Sample weights must contain at least one non-zero number")
    return weights
