"""scikit-learn decision trees -> TreeEnsemble."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ensemble import Tree, TreeEnsemble

__all__ = ["convert_decision_tree"]


def _tree_arrays(tree_: Any, value: np.ndarray) -> Tree:
    return Tree(
        feature=np.asarray(tree_.feature, dtype=np.int64),
        threshold=np.asarray(tree_.threshold, dtype=np.float64),
        left=np.asarray(tree_.children_left, dtype=np.int64),
        right=np.asarray(tree_.children_right, dtype=np.int64),
        value=np.asarray(value, dtype=np.float64),
    )


def convert_decision_tree(model: Any) -> TreeEnsemble:
    """A fitted ``DecisionTreeClassifier`` (class probabilities) or ``DecisionTreeRegressor``."""
    tree_ = model.tree_
    value = np.asarray(tree_.value, dtype=np.float64)  # (n_nodes, n_outputs, n_classes or 1)
    if hasattr(model, "classes_"):
        if value.shape[1] != 1:
            raise NotImplementedError("multi-output classification trees are not supported yet")
        counts = value[:, 0, :]
        totals = counts.sum(axis=1, keepdims=True)
        value = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        value = value[:, :, 0]
    tree = _tree_arrays(tree_, value)
    return TreeEnsemble((tree,), int(model.n_features_in_), split="<=")
