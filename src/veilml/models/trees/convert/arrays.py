"""What every converter shares: a :class:`~veilml.models.trees.ensemble.Tree` from a source model's arrays
(:func:`make_tree`), float32 tests rewritten as exact float64 tests (:func:`float32_tests`), and the
error that names what cannot be converted (:class:`UnsupportedModelError`)."""

from __future__ import annotations

import numpy as np

from veilml.errors import VeilmlError
from veilml.models.trees.ensemble import Tree

__all__ = ["UnsupportedModelError", "float32_tests", "make_tree"]


class UnsupportedModelError(VeilmlError, TypeError, ValueError):
    """The model (its type, or something in it) cannot be converted; the message names the fix."""


_F32_TOP = float(2.0**128 - 2.0**103)  # float64 values >= this round to +inf in float32


def float32_tests(threshold: np.ndarray, strict: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite the tests ``float32(x) <= t`` (``<`` where ``strict``) as exact tests on float64 ``x``.

    A library that casts inputs to float32 before comparing (scikit-learn's trees: float32 inputs,
    float64 thresholds; XGBoost and ONNX float models: both float32) sends ``x`` left exactly when
    ``float32(x) <= T``, where ``T`` is the largest float32 that passes the test. Rounding to the
    nearest float32 is monotone, so that holds exactly when ``x`` is below the midpoint ``U`` of
    ``T`` and the next float32, or equal to it if the tie rounds down to ``T`` (``T`` has an even
    mantissa). Returns ``(U, strict')`` with ``strict'`` True where the test is ``x < U``.
    """
    t = np.asarray(threshold, dtype=np.float64)
    strict = np.asarray(strict, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # thresholds beyond float32's range
        T = t.astype(np.float32)
        T64 = T.astype(np.float64)
        too_high = np.where(strict, T64 >= t, T64 > t)  # T must pass the test itself
        T = np.where(too_high, np.nextafter(T, np.float32(-np.inf)), T).astype(np.float32)
        T64 = T.astype(np.float64)
        up = np.nextafter(T, np.float32(np.inf)).astype(np.float64)
        U = np.where(np.isfinite(up), T64 + (up - T64) / 2, _F32_TOP)  # T == float32 max: next is inf
    U = np.where(T64 == -np.inf, -_F32_TOP, U)
    U = np.where(T64 == np.inf, np.inf, U)
    U = np.where(strict & (t == -np.inf), -np.inf, U)  # float32(x) < -inf: never
    even = (T.view(np.uint32) & 1) == 0
    return U, ~even


def make_tree(
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    value: np.ndarray,
    strict: np.ndarray,
    default_left: np.ndarray,
    root: int = 0,
) -> Tree:
    """A :class:`Tree` from the arrays of a source model (leaves: ``left < 0``).

    Nodes whose test is the same for every finite input (threshold ``+inf``: always left;
    ``-inf``: always right) are replaced by the child every finite input reaches, and the nodes
    are renumbered depth-first from ``root``. A tree that needs neither keeps the source's numbering.
    """
    feature = np.asarray(feature, dtype=np.int64)
    threshold = np.asarray(threshold, dtype=np.float64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    strict = np.asarray(strict, dtype=bool)
    default_left = np.asarray(default_left, dtype=bool)
    value = np.asarray(value, dtype=np.float64)
    inner = left >= 0
    if np.isnan(threshold[inner]).any():
        raise UnsupportedModelError("a split has a NaN threshold; this model cannot be converted")
    constant = inner & np.isinf(threshold)
    if root == 0 and not constant.any() and _reachable(left, right, inner).all():
        idx = np.arange(len(feature))  # the source's numbering is kept
    else:
        idx, left, right = _renumbered(root, left, right, inner, constant, threshold)
    inner = inner[idx]
    return Tree(
        feature=np.where(inner, feature[idx], -1),
        threshold=np.where(inner, threshold[idx], 0.0),
        left=np.where(inner, left, -1),
        right=np.where(inner, right, -1),
        value=np.where(inner[:, None], 0.0, value[idx]),
        strict=strict[idx] & inner,
        default_left=default_left[idx] & inner,
    )


def _reachable(left: np.ndarray, right: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Per node, whether it can be reached from node 0."""
    seen = np.zeros(len(left), dtype=bool)
    stack = [0]
    while stack:
        node = stack.pop()
        seen[node] = True
        if inner[node]:
            stack.extend((int(right[node]), int(left[node])))
    return seen


def _renumbered(
    root: int, left: np.ndarray, right: np.ndarray, inner: np.ndarray, constant: np.ndarray, threshold: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nodes reachable from ``root`` depth-first, left child first (scikit-learn's order), each
    constant node replaced by the child every finite input reaches: (old index of each new node,
    new left children, new right children)."""

    def resolve(node: int) -> int:
        while constant[node]:
            node = int(left[node]) if threshold[node] > 0 else int(right[node])
        return node

    order: list[int] = []
    new_id: dict[int, int] = {}
    stack = [resolve(root)]
    while stack:
        node = stack.pop()
        new_id[node] = len(order)
        order.append(node)
        if inner[node]:
            stack.extend((resolve(int(right[node])), resolve(int(left[node]))))
    new_left = np.array([new_id[resolve(int(left[n]))] if inner[n] else -1 for n in order], dtype=np.int64)
    new_right = np.array([new_id[resolve(int(right[n]))] if inner[n] else -1 for n in order], dtype=np.int64)
    return np.asarray(order, dtype=np.int64), new_left, new_right
