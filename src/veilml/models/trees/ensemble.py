"""One neutral description of every tree model: arrays per tree, the split rule, a base score.

Converters (one per source library) fill it; the lowering reads it. The prediction of an ensemble
is ``base_score + sum over trees of the value of the leaf each tree reaches``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ...quantization import UniformQuantizer

__all__ = ["Tree", "TreeEnsemble"]


@dataclass(frozen=True, eq=False)
class Tree:
    """One binary tree in array form (node 0 is the root; leaves have ``left == right == -1``).

    Attributes:
        feature: (n_nodes,) feature index tested at each internal node (-1 at leaves).
        threshold: (n_nodes,) split threshold at each internal node.
        left / right: (n_nodes,) child indices (-1 at leaves).
        value: (n_nodes, n_outputs) output of each leaf (rows of internal nodes are ignored).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @property
    def is_leaf(self) -> np.ndarray:
        return self.left < 0

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    def leaf_paths(self) -> list[tuple[int, list[tuple[int, bool]]]]:
        """For each leaf, its index and its path as ``(node, went_right)`` pairs from the root."""
        paths: list[tuple[int, list[tuple[int, bool]]]] = []
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            if self.is_leaf[node]:
                paths.append((node, path))
                continue
            stack.append((int(self.right[node]), path + [(node, True)]))
            stack.append((int(self.left[node]), path + [(node, False)]))
        return sorted(paths)

    def depth(self) -> int:
        return max((len(path) for _, path in self.leaf_paths()), default=0)


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A sum of trees.

    Attributes:
        trees: the trees.
        n_features: number of input features.
        split: ``"<="`` (scikit-learn, LightGBM) or ``"<"`` (XGBoost): the test that sends a
            sample to the *left* child, ``x[feature] <split> threshold``.
        base_score: (n_outputs,) added to the sum of leaf values.
    """

    trees: tuple[Tree, ...]
    n_features: int
    split: Literal["<=", "<"] = "<="
    base_score: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.split not in ("<=", "<"):
            raise ValueError(f"split must be '<=' or '<', got {self.split!r}")
        if not self.trees:
            raise ValueError("a TreeEnsemble needs at least one tree")

    @property
    def n_outputs(self) -> int:
        return int(self.trees[0].value.shape[1])

    @property
    def bias(self) -> np.ndarray:
        if self.base_score is None:
            return np.zeros(self.n_outputs)
        return np.asarray(self.base_score, dtype=np.float64)

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """(n_samples, n_trees) index of the leaf each sample reaches in each tree."""
        X = np.asarray(X, dtype=np.float64)
        reached = np.zeros((X.shape[0], len(self.trees)), dtype=np.int64)
        rows = np.arange(X.shape[0])
        for t, tree in enumerate(self.trees):
            node = np.zeros(X.shape[0], dtype=np.int64)
            for _ in range(tree.n_nodes):
                inner = ~tree.is_leaf[node]
                if not inner.any():
                    break
                x = X[rows, np.maximum(tree.feature[node], 0)]
                go_left = x <= tree.threshold[node] if self.split == "<=" else x < tree.threshold[node]
                child = np.where(go_left, tree.left[node], tree.right[node])
                node = np.where(inner, child, node)
            reached[:, t] = node
        return reached

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Reference float evaluation (n_samples, n_outputs), used to check converters and lowerings."""
        reached = self.leaves(X)
        total = np.zeros((reached.shape[0], self.n_outputs)) + self.bias
        for t, tree in enumerate(self.trees):
            total += tree.value[reached[:, t]]
        return total

    def thresholds_by_feature(self) -> list[np.ndarray]:
        """The split thresholds used on each feature (possibly empty)."""
        found: list[list[float]] = [[] for _ in range(self.n_features)]
        for tree in self.trees:
            inner = ~tree.is_leaf
            for f, t in zip(tree.feature[inner], tree.threshold[inner]):
                found[int(f)].append(float(t))
        return [np.asarray(v, dtype=np.float64) for v in found]

    def to_codes(self, quantizer: UniformQuantizer) -> TreeEnsemble:
        """The same ensemble with thresholds moved to the quantizer's (unrounded) code scale."""
        trees = []
        for tree in self.trees:
            codes = tree.threshold.copy()
            inner = ~tree.is_leaf
            # per node: threshold / scale[feature] + zero_point[feature], unrounded
            scale = np.broadcast_to(quantizer.scale, (self.n_features,))[tree.feature[inner]]
            zero = np.broadcast_to(quantizer.zero_point, (self.n_features,))[tree.feature[inner]]
            codes[inner] = tree.threshold[inner] / scale + zero
            trees.append(replace(tree, threshold=codes))
        return replace(self, trees=tuple(trees))
