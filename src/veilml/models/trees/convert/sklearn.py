"""scikit-learn decision trees -> TreeEnsemble, read directly from ``model.tree_``.

treelite (the front end of every other library, :mod:`.treelite`) does not import a single
``DecisionTreeClassifier`` / ``DecisionTreeRegressor``; a forest's trees go through treelite with
the same semantics as here: scikit-learn casts inputs to float32 and compares them with float64
thresholds (rewritten by :func:`float32_tests`), classifier leaves hold class fractions, and
``tree_.missing_go_to_left`` says where NaN goes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.models.trees.convert.arrays import UnsupportedModelError, float32_tests, make_tree
from veilml.models.trees.ensemble import TreeEnsemble

__all__ = ["convert_decision_tree"]


def convert_decision_tree(model: Any) -> TreeEnsemble:
    """A fitted ``DecisionTreeClassifier`` (class probabilities) or ``DecisionTreeRegressor``.

    The raw score is what ``predict_proba`` (one column per class, even for two classes) or
    ``predict`` returns; ``post_transform`` is ``"identity"``.
    """
    tree_ = model.tree_
    value = np.asarray(tree_.value, dtype=np.float64)  # (n_nodes, n_outputs, n_classes or 1)
    if value.shape[1] != 1:
        raise UnsupportedModelError(
            f"this {type(model).__name__} has {value.shape[1]} outputs (multi-output); veilml converts "
            "single-output trees: fit one model per target"
        )
    classifier = hasattr(model, "classes_")
    if classifier:
        counts = value[:, 0, :]
        totals = counts.sum(axis=1, keepdims=True)
        value = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        value = value[:, :, 0]
    left = np.asarray(tree_.children_left)
    threshold, strict = float32_tests(tree_.threshold, np.zeros(len(left), dtype=bool))
    missing_left = getattr(tree_, "missing_go_to_left", None)
    tree = make_tree(
        tree_.feature,
        threshold,
        left,
        tree_.children_right,
        value,
        strict,
        np.zeros(len(left), dtype=bool) if missing_left is None else np.asarray(missing_left, dtype=bool),
    )
    return TreeEnsemble(
        (tree,),
        int(model.n_features_in_),
        split="<=",
        post_transform="identity",
        task="classification" if classifier else "regression",
    )
