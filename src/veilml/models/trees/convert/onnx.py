"""ONNX-ML tree ensembles -> TreeEnsemble.

Reads the ``ai.onnx.ml`` operators ``TreeEnsembleClassifier`` and ``TreeEnsembleRegressor`` (as
written by skl2onnx for scikit-learn trees, forests and gradient boosting, and by onnxmltools for
XGBoost and LightGBM) with the ``onnx`` package, and reproduces what onnxruntime computes:

- the tests: ``nodes_modes`` ``BRANCH_LEQ`` / ``BRANCH_LT`` / ``BRANCH_GTE`` / ``BRANCH_GT`` on
  ``nodes_values``; a float input is compared in float32 (the tests are rewritten as exact float64
  tests), a double input in float64; ``nodes_missing_value_tracks_true`` gives NaN's direction;
- the scores: ``base_values`` plus the leaf weights (``class_*`` / ``target_*``), averaged for
  ``aggregate_function="AVERAGE"``; ``post_transform`` ``NONE`` / ``LOGISTIC`` / ``SOFTMAX``;
- onnxruntime's binary classifier with a single weight column (``class_ids`` all 0, two class
  labels): the probabilities are ``[1 - s, s]`` for ``NONE`` with non-negative weights (forests) and
  ``[1 - sigmoid(s), sigmoid(s)]`` for ``LOGISTIC`` (boosting).

Refused with :class:`UnsupportedModelError`: any operator that changes the scores (a preprocessing
step before the trees, arithmetic after them other than a multiplication by 1), ``BRANCH_EQ`` /
``BRANCH_NEQ`` tests, several targets, ``PROBIT`` / ``SOFTMAX_ZERO`` or a per-class logistic,
``MIN`` / ``MAX`` aggregation, the ``TreeEnsemble`` operator of ai.onnx.ml opset 5, and the
binary layouts whose onnxruntime output is not a probability. Label outputs are ignored; the
ensemble's raw score, passed through ``ensemble.transform``, is the probabilities / values output.
Inputs must be NaN-free (veilml refuses NaN at predict time).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from veilml.models.trees.convert.arrays import UnsupportedModelError, float32_tests, make_tree
from veilml.models.trees.ensemble import TreeEnsemble

__all__ = ["from_onnx"]

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_PASS_THROUGH = ("Identity", "Cast", "ZipMap")
_FLOAT, _DOUBLE = 1, 11  # onnx.TensorProto.FLOAT / DOUBLE


def _load(path_or_model: Any) -> Any:
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("from_onnx needs the onnx package: pip install 'veilml[onnx]'") from error
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(path_or_model))
    if isinstance(path_or_model, (str, os.PathLike)):
        return onnx.load(os.fspath(path_or_model))
    raise TypeError(f"from_onnx takes a path, serialized bytes or an onnx.ModelProto, got {type(path_or_model).__name__}")


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attribute.name] = value
    return out


def _constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs by name."""
    import onnx

    values = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attrs = _attributes(node)
            if "value" in attrs:
                values[node.output[0]] = np.asarray(attrs["value"])
    return values


def _is_one(name: str, constants: dict[str, np.ndarray]) -> bool:
    value = constants.get(name)
    return value is not None and value.size >= 1 and bool(np.all(value == 1))


def _input_precision(graph: Any, tree_node: Any) -> tuple[bool, bool, int | None]:
    """How the trees see their input: (rounded to float32?, thresholds in float32?, n_features).

    The input reaches the trees directly or through Identity / Cast operators; any float stage
    rounds it to float32, and the tree operator keeps float thresholds when its input is float.
    """
    producers = {out: node for node in graph.node for out in node.output}
    inputs = {i.name: i for i in graph.input}
    name = tree_node.input[0]
    types = []  # element types from the tree back to the graph input
    while name not in inputs:
        node = producers.get(name)
        if node is None or node.op_type not in ("Identity", "Cast"):
            op = "nothing" if node is None else node.op_type
            raise UnsupportedModelError(
                f"the trees read their input through {op}, not directly from a graph input: veilml "
                "converts tree ensembles alone; export the model without its preprocessing steps and apply them yourself"
            )
        if node.op_type == "Cast":
            types.append(int(_attributes(node)["to"]))
        name = node.input[0]
    tensor = inputs[name].type.tensor_type
    types.append(int(tensor.elem_type))
    if any(t not in (_FLOAT, _DOUBLE) for t in types):
        raise UnsupportedModelError(f"the trees' input has ONNX element types {types}; veilml converts float or double inputs")
    dims = tensor.shape.dim
    n_features = int(dims[1].dim_value) if len(dims) == 2 and dims[1].HasField("dim_value") else None
    return _FLOAT in types, types[0] == _FLOAT, n_features


def _check_outputs(graph: Any, tree_node: Any) -> None:
    """The scores must reach a graph output unchanged; nothing else may read the input."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    constants = _constant_values(graph)
    score = tree_node.output[1] if tree_node.op_type == "TreeEnsembleClassifier" else tree_node.output[0]
    name = score
    while name not in outputs:
        readers = consumers.get(name, [])
        node = next((n for n in readers if n.op_type in _PASS_THROUGH), None)
        if node is None:
            node = next(
                (n for n in readers if n.op_type == "Mul" and any(_is_one(i, constants) for i in n.input if i != name)), None
            )
        if node is None:
            ops = ", ".join(sorted({n.op_type for n in readers})) or "nothing"
            raise UnsupportedModelError(
                f"the trees' scores go through {ops} before reaching a graph output; veilml converts "
                "tree ensembles whose scores are the output (Identity, Cast, ZipMap in between)"
            )
        if node.op_type == "Cast" and int(_attributes(node)["to"]) not in (_FLOAT, _DOUBLE):
            raise UnsupportedModelError("the trees' scores are cast to a non-float type; veilml converts float scores")
        name = node.output[0]
    for graph_input in graph.input:
        for reader in consumers.get(graph_input.name, []):
            if reader is not tree_node and reader.op_type not in ("Identity", "Cast"):
                raise UnsupportedModelError(
                    f"the graph input {graph_input.name!r} is also read by {reader.op_type}; veilml converts a "
                    "graph made of one tree ensemble"
                )


def from_onnx(path_or_model: Any) -> TreeEnsemble:
    """An ONNX model holding one ``TreeEnsembleClassifier`` or ``TreeEnsembleRegressor``.

    Args:
        path_or_model: a file path, the serialized model (bytes) or an ``onnx.ModelProto``.

    Returns:
        A :class:`TreeEnsemble` whose ``transform(predict(X))`` equals onnxruntime's probabilities
        (classifiers) or predictions (regressors) on ``X`` (cast to the graph's input type).
    """
    model = _load(path_or_model)
    graph = model.graph
    tree_nodes = [n for n in graph.node if n.op_type in _TREE_OPS and n.domain == "ai.onnx.ml"]
    others = [n for n in graph.node if n.op_type == "TreeEnsemble" and n.domain == "ai.onnx.ml"]
    if others:
        raise UnsupportedModelError(
            "the graph uses the TreeEnsemble operator of ai.onnx.ml opset 5; veilml reads TreeEnsembleClassifier / "
            "TreeEnsembleRegressor: export with an ai.onnx.ml target opset of 3 or lower"
        )
    if len(tree_nodes) != 1:
        raise UnsupportedModelError(
            f"the graph has {len(tree_nodes)} TreeEnsembleClassifier/TreeEnsembleRegressor operators; "
            "veilml converts a graph with exactly one"
        )
    node = tree_nodes[0]
    precision = _input_precision(graph, node)
    _check_outputs(graph, node)
    attrs = _attributes(node)
    if node.op_type == "TreeEnsembleClassifier":
        return _classifier(attrs, precision)
    return _regressor(attrs, precision)


# --------------------------------------------------------------------------------- trees


def _get(attrs: dict[str, Any], name: str, default: Any = None) -> np.ndarray:
    for key in (f"{name}_as_tensor", name):
        if key in attrs:
            return np.asarray(attrs[key])
    if default is None:
        raise UnsupportedModelError(f"the tree operator has no attribute {name!r}")
    return np.asarray(default)


def _trees(
    attrs: dict[str, Any],
    prefix: str,
    n_outputs: int,
    precision: tuple[bool, bool, int | None],
    output_of: Any,
) -> tuple[list[Any], int]:
    """The trees with their leaf weights, and the number of features."""
    rounded, float_thresholds, declared = precision
    tree_ids = _get(attrs, "nodes_treeids").astype(np.int64)
    node_ids = _get(attrs, "nodes_nodeids").astype(np.int64)
    features = _get(attrs, "nodes_featureids").astype(np.int64)
    modes = np.asarray(attrs.get("nodes_modes", []), dtype=object)
    values = _get(attrs, "nodes_values").astype(np.float64)
    true_ids = _get(attrs, "nodes_truenodeids").astype(np.int64)
    false_ids = _get(attrs, "nodes_falsenodeids").astype(np.int64)
    tracks_true = _get(attrs, "nodes_missing_value_tracks_true", np.zeros(len(tree_ids))).astype(bool)
    if float_thresholds:
        values = values.astype(np.float32).astype(np.float64)  # onnxruntime keeps float thresholds for float inputs
    bad = sorted(set(modes) - {"BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "LEAF"})
    if bad:
        raise UnsupportedModelError(
            f"the trees use node modes {bad}; veilml converts BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT"
        )

    w_tree = _get(attrs, f"{prefix}_treeids").astype(np.int64)
    w_node = _get(attrs, f"{prefix}_nodeids").astype(np.int64)
    w_out = output_of(_get(attrs, f"{prefix}_ids").astype(np.int64))
    w_value = _get(attrs, f"{prefix}_weights").astype(np.float64)

    trees = []
    for tree_id in np.unique(tree_ids):
        rows = np.flatnonzero(tree_ids == tree_id)
        index = {int(node_ids[r]): i for i, r in enumerate(rows)}
        n = len(rows)
        leaf = modes[rows] == "LEAF"
        swap = np.isin(modes[rows], ("BRANCH_GTE", "BRANCH_GT"))  # x >= t goes to 'true' == x < t goes to 'false'
        strict = np.isin(modes[rows], ("BRANCH_LT", "BRANCH_GTE"))

        def child(ids: np.ndarray, index: dict[int, int] = index, leaf: np.ndarray = leaf) -> np.ndarray:
            return np.array([index[int(i)] if not is_leaf else -1 for i, is_leaf in zip(ids, leaf)], dtype=np.int64)

        try:
            true_child, false_child = child(true_ids[rows]), child(false_ids[rows])
        except KeyError as error:
            raise UnsupportedModelError(f"tree {tree_id} refers to node {error} which it does not have") from None
        left = np.where(swap, false_child, true_child)
        right = np.where(swap, true_child, false_child)
        default_left = tracks_true[rows] ^ swap
        threshold = values[rows]
        if rounded:
            threshold, strict = float32_tests(threshold, strict)
        value = np.zeros((n, n_outputs))
        for r in np.flatnonzero(w_tree == tree_id):
            value[index[int(w_node[r])], w_out[r]] += w_value[r]
        referenced = set(true_child[~leaf]) | set(false_child[~leaf])
        roots = [i for i in range(n) if i not in referenced]
        if len(roots) != 1:
            raise UnsupportedModelError(f"tree {tree_id} has {len(roots)} roots; veilml converts trees with one root")
        trees.append(make_tree(features[rows], threshold, left, right, value, strict, default_left, root=roots[0]))
    used = int(features[modes != "LEAF"].max(initial=-1)) + 1
    if declared is not None and declared < used:
        raise UnsupportedModelError(f"the trees test feature {used - 1} but the input has {declared} features")
    return trees, declared if declared is not None else max(used, 1)


def _classifier(attrs: dict[str, Any], precision: tuple[bool, bool, int | None]) -> TreeEnsemble:
    labels = attrs.get("classlabels_int64s", attrs.get("classlabels_strings", []))
    n_classes = len(labels)
    class_ids = _get(attrs, "class_ids").astype(np.int64)
    used = set(class_ids.tolist())
    base = _get(attrs, "base_values", []).astype(np.float64)
    post = attrs.get("post_transform", "NONE")
    weights = _get(attrs, "class_weights").astype(np.float64)
    if n_classes < 2 or not used <= set(range(n_classes)):
        raise UnsupportedModelError(f"the classifier has {n_classes} class labels and weights for classes {sorted(used)}")

    if n_classes == 2 and used == {0}:
        # onnxruntime's binary layout: one score s per row for the second class
        if len(base) > 1:
            raise UnsupportedModelError(
                "a binary classifier with one weight column and two base_values: onnxruntime's output is not a probability"
            )
        if post == "LOGISTIC":
            trees, n_features = _trees(attrs, "class", 1, precision, lambda ids: np.zeros_like(ids))
            base_score = base[:1] if len(base) else None
            return TreeEnsemble(tuple(trees), n_features, base_score=base_score, post_transform="sigmoid", task="classification")
        if post == "NONE" and np.all(weights >= 0):
            # probabilities [1 - s, s]: the first column carries the negated weights and 1 - base
            b = float(base[0]) if len(base) else 0.0
            trees, n_features = _trees(attrs, "class", 2, precision, lambda ids: np.ones_like(ids))
            trees = [_negate_into_first(tree) for tree in trees]
            base_score = np.array([1.0 - b, b])
            return TreeEnsemble(tuple(trees), n_features, base_score=base_score, task="classification")
        raise UnsupportedModelError(
            f"a binary classifier with one weight column, post_transform={post!r} and signed weights: "
            "onnxruntime's output is not a probability; veilml converts LOGISTIC, or NONE with non-negative weights"
        )
    if n_classes == 2 and len(base):
        raise UnsupportedModelError(
            "a binary classifier with weights for both classes and base_values: onnxruntime does not add them "
            "per class; export without base_values"
        )
    if len(base) not in (0, n_classes):
        raise UnsupportedModelError(f"the classifier has {len(base)} base_values for {n_classes} classes")
    if post not in ("NONE", "SOFTMAX"):
        raise UnsupportedModelError(
            f"post_transform={post!r} on {n_classes} class scores; veilml's client applies the identity, a softmax, "
            "or a sigmoid to a single binary margin"
        )
    trees, n_features = _trees(attrs, "class", n_classes, precision, lambda ids: ids)
    return TreeEnsemble(
        tuple(trees),
        n_features,
        base_score=base if len(base) else None,
        post_transform="softmax" if post == "SOFTMAX" else "identity",
        task="classification",
    )


def _negate_into_first(tree: Any) -> Any:
    value = tree.value.copy()
    value[:, 0] = -value[:, 1]
    return replace(tree, value=value)


def _regressor(attrs: dict[str, Any], precision: tuple[bool, bool, int | None]) -> TreeEnsemble:
    n_targets = int(attrs.get("n_targets", 1))
    if n_targets != 1:
        raise UnsupportedModelError(f"the regressor predicts {n_targets} targets; veilml converts single-output models")
    post = attrs.get("post_transform", "NONE")
    if post != "NONE":
        raise UnsupportedModelError(f"the regressor has post_transform={post!r}; veilml converts regressors with NONE")
    aggregate = attrs.get("aggregate_function", "SUM")
    if aggregate not in ("SUM", "AVERAGE"):
        raise UnsupportedModelError(f"the regressor aggregates its trees with {aggregate}; veilml converts SUM and AVERAGE")
    base = _get(attrs, "base_values", []).astype(np.float64)
    if len(base) > 1:
        raise UnsupportedModelError(f"the regressor has {len(base)} base_values for one target")
    trees, n_features = _trees(attrs, "target", 1, precision, lambda ids: np.zeros_like(ids))
    if aggregate == "AVERAGE":
        trees = [replace(tree, value=tree.value / len(trees)) for tree in trees]
    base_score = base[:1] if len(base) else None
    return TreeEnsemble(tuple(trees), n_features, base_score=base_score, task="regression")
