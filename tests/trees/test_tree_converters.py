"""The tree front end: every supported library's model becomes a TreeEnsemble that predicts what the
library predicts.

Oracles: the source library's own ``predict_proba`` / ``predict`` for every family and task, and
onnxruntime running the skl2onnx / onnxmltools export of the same model (an implementation
independent of treelite and of veilml) for every family skl2onnx / onnxmltools can export
(skl2onnx 1.20 cannot export HistGradientBoosting). hummingbird-ml is not used: 0.4.12 requires
onnx<=1.16.1 and gets XGBoost 3 models wrong.

Besides ordinary test rows, every family is checked on rows placed on each split threshold and on
its float32 / float64 neighbours, where float32 comparisons and ``<`` versus ``<=`` decide.
"""

from __future__ import annotations

import numpy as np
import pytest
from requires import require
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from veilml.compiler import evaluate
from veilml.models.trees import Tree, TreeEnsemble, UnsupportedModelError, lower_ensemble, to_ensemble
from veilml.models.trees.convert.arrays import float32_tests
from veilml.models.trees.convert.onnx import from_onnx
from veilml.models.trees.convert.sklearn import convert_decision_tree
from veilml.models.trees.lowering.leaf_values import right_code

xgboost = require("xgboost", "trees")
lightgbm = require("lightgbm", "trees")
treelite = require("treelite", "trees")
onnx = require("onnx", "onnx")
onnxruntime = require("onnxruntime", "onnx")
skl2onnx = require("skl2onnx", "onnx")
onnxmltools = require("onnxmltools", "onnx")

from onnx import TensorProto, helper  # noqa: E402
from onnxmltools.convert import convert_lightgbm, convert_xgboost  # noqa: E402
from onnxmltools.convert.common.data_types import FloatTensorType  # noqa: E402

N_TRAIN = 300
SMALL = dict(n_estimators=10, max_depth=3)


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """HistGradientBoosting's OpenMP threads crawl on a busy 2-core machine; the models are tiny."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _data(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if kind == "regression":
        X, y = make_regression(n_samples=500, n_features=6, n_informative=4, noise=5.0, random_state=0)
    else:
        X, y = make_classification(
            n_samples=500, n_features=6, n_informative=4, n_classes=2 if kind == "binary" else 3, random_state=0
        )
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:]


def _model(family: str, kind: str):
    classifier = kind != "regression"
    if family == "DecisionTree":
        return (DecisionTreeClassifier if classifier else DecisionTreeRegressor)(max_depth=4, random_state=0)
    if family == "RandomForest":
        return (RandomForestClassifier if classifier else RandomForestRegressor)(random_state=0, **SMALL)
    if family == "ExtraTrees":
        return (ExtraTreesClassifier if classifier else ExtraTreesRegressor)(random_state=0, **SMALL)
    if family == "GradientBoosting":
        return (GradientBoostingClassifier if classifier else GradientBoostingRegressor)(random_state=0, **SMALL)
    if family == "HistGradientBoosting":
        return (HistGradientBoostingClassifier if classifier else HistGradientBoostingRegressor)(max_iter=10, max_depth=3)
    if family == "XGBoost":
        return (xgboost.XGBClassifier if classifier else xgboost.XGBRegressor)(n_jobs=1, **SMALL)
    if family == "LightGBM":
        return (lightgbm.LGBMClassifier if classifier else lightgbm.LGBMRegressor)(n_jobs=1, verbose=-1, **SMALL)
    raise AssertionError(family)


def _reference(model, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)
    return np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), -1)


def _output(ensemble: TreeEnsemble, X: np.ndarray) -> np.ndarray:
    return ensemble.transform(ensemble.predict(X))


def _boundary_rows(ensemble: TreeEnsemble, X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` with one feature set on a threshold of the ensemble or a float neighbour of it."""
    rows = []
    for tree in ensemble.trees:
        for node in np.flatnonzero(~tree.is_leaf):
            u = tree.threshold[node]
            u32 = np.float32(u)
            for v in (
                u,
                np.nextafter(u, np.inf),
                np.nextafter(u, -np.inf),
                u32,
                np.nextafter(u32, np.float32(np.inf)),
                np.nextafter(u32, np.float32(-np.inf)),
            ):
                row = X[len(rows) % len(X)].copy()
                row[tree.feature[node]] = float(v)
                rows.append(row)
    return np.asarray(rows)


FAMILIES = ["DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "HistGradientBoosting", "XGBoost", "LightGBM"]
KINDS = ["binary", "multiclass", "regression"]
AVERAGED = {"DecisionTree", "RandomForest", "ExtraTrees"}  # raw score = averaged class probabilities


def _expected_output(family: str, kind: str) -> tuple[str, int, str]:
    if kind == "regression":
        return "identity", 1, "regression"
    n_classes = 2 if kind == "binary" else 3
    if family in AVERAGED:
        return "identity", n_classes, "classification"
    return ("sigmoid", 1, "classification") if kind == "binary" else ("softmax", 3, "classification")


# ------------------------------------------------------------------------------------ float32 tests


def test_float32_tests_are_exact_on_float64_inputs():
    """``float32(x) <= t`` (or ``<``) and the rewritten float64 test agree on every probed x."""
    rng = np.random.default_rng(0)
    t = np.concatenate(
        [
            rng.normal(0, 3, 500),
            rng.normal(0, 3, 500).astype(np.float32).astype(np.float64),  # float32 thresholds (XGBoost, ONNX)
            [0.0, -0.0, 1e-45, -1e-45, 1e-50, 2.5, 7.5, 8.0, 3.4028234663852886e38, -3.4028234663852886e38, 1e39, -1e39],
        ]
    )
    with np.errstate(over="ignore"):
        for strict in (False, True):
            u, strict_u = float32_tests(t, np.full(t.shape, strict))
            t32 = t.astype(np.float32)
            for x in (
                t,
                u,
                np.nextafter(u, np.inf),
                np.nextafter(u, -np.inf),
                t32.astype(np.float64),
                np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
                np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
            ):
                x32 = x.astype(np.float32).astype(np.float64)
                library = x32 < t if strict else x32 <= t
                ours = np.where(strict_u, x < u, x <= u)
                finite = np.isfinite(x)
                assert np.array_equal(library[finite], ours[finite])
    # infinite thresholds: always / never
    u, s = float32_tests(np.array([np.inf, -np.inf]), np.array([False, True]))
    assert u[0] == np.inf and not s[0] and u[1] == -np.inf


# ------------------------------------------------------------------------------------ library models


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_predicts_like_the_library(family, kind):
    X, y, X_test = _data(kind)
    model = _model(family, kind).fit(X, y)
    ensemble = to_ensemble(model)
    post, n_outputs, task = _expected_output(family, kind)
    assert (ensemble.post_transform, ensemble.n_outputs, ensemble.task) == (post, n_outputs, task)
    assert ensemble.n_features == X.shape[1] and ensemble.base_score.shape == (n_outputs,)
    reference = _reference(model, X_test)
    assert _output(ensemble, X_test).shape == reference.shape
    np.testing.assert_allclose(_output(ensemble, X_test), reference, rtol=1e-5, atol=1e-5)
    # on each threshold and next to it: same path as the library (a wrong side changes a leaf)
    edges = _boundary_rows(ensemble, X_test)
    np.testing.assert_allclose(_output(ensemble, edges), _reference(model, edges), rtol=1e-5, atol=1e-5)


def test_float32_libraries_get_per_node_strictness_and_float64_ones_keep_their_thresholds():
    X, y, _ = _data("binary")
    forest = RandomForestClassifier(random_state=0, **SMALL).fit(X, y)
    strict = np.concatenate([t.strict[~t.is_leaf] for t in to_ensemble(forest).trees])
    assert 0 < strict.mean() < 1  # float32 inputs: '<' or '<=' depending on the threshold's float32 parity
    lgbm = lightgbm.LGBMClassifier(n_jobs=1, verbose=-1, **SMALL).fit(X, y)
    ensemble = to_ensemble(lgbm)
    assert not any(t.strict.any() for t in ensemble.trees)  # LightGBM compares float64 inputs with '<='
    dumped = {n["threshold"] for info in lgbm.booster_.dump_model()["tree_info"] for n in _splits(info["tree_structure"])}
    assert {float(v) for t in ensemble.trees for v in t.threshold[~t.is_leaf]} == dumped


def _splits(node):
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


def test_decision_tree_converter_agrees_with_treelite_on_a_forest_tree():
    """The direct DecisionTree converter and the treelite path give one semantics: a one-tree forest."""
    X, y, _ = _data("multiclass")
    forest = RandomForestClassifier(n_estimators=1, max_depth=4, bootstrap=False, random_state=0).fit(X, y)
    via_treelite = to_ensemble(forest).trees[0]
    direct = convert_decision_tree(forest.estimators_[0]).trees[0]
    for name in ("feature", "threshold", "left", "right", "strict", "default_left"):
        assert np.array_equal(getattr(via_treelite, name), getattr(direct, name)), name
    np.testing.assert_allclose(via_treelite.value, direct.value, atol=1e-12)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_raw_boosters(kind):
    X, y, X_test = _data(kind)
    objective = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}[kind]
    params = {"objective": objective, "max_depth": 3, "nthread": 1, **({"num_class": 3} if kind == "multiclass" else {})}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=y), num_boost_round=10)
    ensemble = to_ensemble(booster)
    expected = booster.predict(xgboost.DMatrix(X_test)).reshape(len(X_test), -1)
    out = _output(ensemble, X_test)
    np.testing.assert_allclose(out[:, 1:] if kind == "binary" else out, expected, rtol=1e-5, atol=1e-5)

    lgb_objective = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}[kind]
    lgb_params = {
        "objective": lgb_objective,
        "max_depth": 3,
        "verbose": -1,
        "num_threads": 1,
        **({"num_class": 3} if kind == "multiclass" else {}),
    }
    lgb_booster = lightgbm.train(lgb_params, lightgbm.Dataset(X, label=y), num_boost_round=10)
    ensemble = to_ensemble(lgb_booster)
    expected = lgb_booster.predict(X_test).reshape(len(X_test), -1)
    out = _output(ensemble, X_test)
    np.testing.assert_allclose(out[:, 1:] if kind == "binary" else out, expected, rtol=1e-5, atol=1e-5)


def _variants():
    yield "GradientBoosting loss=exponential", lambda: GradientBoostingClassifier(loss="exponential", **SMALL), "binary"
    yield "GradientBoosting loss=huber", lambda: GradientBoostingRegressor(loss="huber", **SMALL), "regression"
    yield (
        "HistGradientBoosting quantile",
        lambda: HistGradientBoostingRegressor(loss="quantile", quantile=0.3, max_iter=10),
        "regression",
    )
    yield "XGBoost dart", lambda: xgboost.XGBClassifier(booster="dart", rate_drop=0.3, n_jobs=1, **SMALL), "binary"
    yield "XGBoost multi:softmax", lambda: xgboost.XGBClassifier(objective="multi:softmax", n_jobs=1, **SMALL), "multiclass"
    yield "XGBoost reg:logistic", lambda: xgboost.XGBRegressor(objective="reg:logistic", n_jobs=1, **SMALL), "binary"
    yield "XGBoost random forest", lambda: xgboost.XGBRFClassifier(n_jobs=1, **SMALL), "binary"
    yield (
        "LightGBM rf (averaged)",
        lambda: lightgbm.LGBMClassifier(boosting_type="rf", subsample=0.7, subsample_freq=1, n_jobs=1, verbose=-1, **SMALL),
        "multiclass",
    )
    yield "LightGBM sigmoid=0.5", lambda: lightgbm.LGBMClassifier(sigmoid=0.5, n_jobs=1, verbose=-1, **SMALL), "binary"


@pytest.mark.parametrize("name, make, kind", list(_variants()), ids=[v[0] for v in _variants()])
def test_objectives_and_boosting_variants(name, make, kind):
    X, y, X_test = _data(kind)
    model = make().fit(X, y)
    ensemble = to_ensemble(model)
    np.testing.assert_allclose(_output(ensemble, X_test), _reference(model, X_test), rtol=1e-5, atol=1e-5)


def test_xgboost_early_stopping_uses_the_best_iteration_like_the_library():
    X, y, X_test = _data("binary")
    model = xgboost.XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.9, early_stopping_rounds=3, n_jobs=1)
    model.fit(X[:200], y[:200], eval_set=[(X[200:], y[200:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    ensemble = to_ensemble(model)
    assert len(ensemble.trees) == model.best_iteration + 1
    np.testing.assert_allclose(_output(ensemble, X_test), model.predict_proba(X_test), atol=1e-5)
    # a Booster predicts with all its trees by default, and so does its conversion
    booster = model.get_booster()
    all_trees = to_ensemble(booster)
    np.testing.assert_allclose(_output(all_trees, X_test)[:, 1], booster.predict(xgboost.DMatrix(X_test)), atol=1e-5)


def test_missing_values_follow_default_left():
    """Where the source sends NaN is recorded per node, and ``predict`` follows it."""
    X, y, X_test = _data("binary")
    rng = np.random.default_rng(0)
    X, X_test = X.copy(), X_test.copy()
    X[rng.random(X.shape) < 0.2] = np.nan
    X_test[rng.random(X_test.shape) < 0.2] = np.nan
    for model in (
        xgboost.XGBClassifier(n_jobs=1, **SMALL),
        lightgbm.LGBMClassifier(n_jobs=1, verbose=-1, **SMALL),
        ExtraTreesClassifier(random_state=0, **SMALL),
    ):
        model.fit(X, y)
        ensemble = to_ensemble(model)
        assert any(t.default_left[~t.is_leaf].any() for t in ensemble.trees)
        np.testing.assert_allclose(_output(ensemble, X_test), model.predict_proba(X_test), atol=1e-5)


def test_splits_that_only_separate_nan_are_removed():
    """A threshold of +inf (non-missing left, NaN right) is the same test for every finite input."""
    X, y, X_test = _data("binary")
    X = X.copy()
    X[::3, 0] = np.nan
    y = np.where(np.isnan(X[:, 0]), 2, y)  # class 2: exactly the rows missing feature 0
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)
    assert np.isinf(tree.tree_.threshold).any()
    ensemble = to_ensemble(tree)
    inner = ~ensemble.trees[0].is_leaf
    assert np.isfinite(ensemble.trees[0].threshold[inner]).all()
    assert ensemble.trees[0].n_nodes < tree.tree_.node_count
    np.testing.assert_array_equal(_output(ensemble, X_test), tree.predict_proba(X_test))


# ------------------------------------------------------------------------------------ TreeEnsemble


def _stump(value, **kwargs) -> TreeEnsemble:
    tree = Tree(feature=[0, -1, -1], threshold=[0.5, 0, 0], left=[1, -1, -1], right=[2, -1, -1], value=value)
    return TreeEnsemble((tree,), 1, **kwargs)


def test_tree_ensemble_interface():
    X = np.array([[0.0], [0.5], [1.0]])
    regression = _stump([[0.0], [1.0], [3.0]], base_score=[0.5])
    assert regression.trees[0].strict.tolist() == [False] * 3  # split "<=" by default
    np.testing.assert_array_equal(regression.predict(X), [[1.5], [1.5], [3.5]])
    np.testing.assert_array_equal(regression.transform(regression.predict(X)), regression.predict(X))
    strict = _stump([[0.0], [1.0], [3.0]], split="<")
    assert strict.trees[0].strict.all() and strict.predict(X)[1, 0] == 3.0

    binary = _stump([[0.0], [-2.0], [2.0]], post_transform="sigmoid", task="classification")
    proba = binary.transform(binary.predict(X))
    assert proba.shape == (3, 2)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp([2.0, 2.0, -2.0])))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    logistic = _stump([[0.0], [-2.0], [2.0]], post_transform="sigmoid", task="regression")
    assert logistic.transform(logistic.predict(X)).shape == (3, 1)
    softmax = _stump([[0, 0, 0], [1.0, 2.0, 3.0], [0.0, 0.0, 9.0]], post_transform="softmax", task="classification")
    out = softmax.transform(softmax.predict(X))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())

    with pytest.raises(ValueError, match="post_transform='sigmoid' needs one output"):
        _stump([[0, 0], [1, 2], [3, 4]], post_transform="sigmoid")
    with pytest.raises(ValueError, match="base_score has shape"):
        _stump([[0.0], [1.0], [3.0]], base_score=[1.0, 2.0])
    with pytest.raises(ValueError, match="post_transform must be one of"):
        _stump([[0.0], [1.0], [3.0]], post_transform="exp")
    with pytest.raises(ValueError, match="raw scores must have shape"):
        regression.transform(np.zeros((2, 3)))


def test_right_code_per_node():
    assert right_code(np.array([2.5, 3.0, 3.0, -0.5]), np.array([False, False, True, True])).tolist() == [3, 4, 3, 0]


def test_lowering_honours_per_node_strictness():
    """On integer thresholds '<' and '<=' differ; the integer circuit follows each node's test."""
    tree = Tree(
        feature=[0, 1, -1, -1, 1, -1, -1],
        threshold=[8.0, 5.0, 0, 0, 5.0, 0, 0],
        left=[1, 2, -1, -1, 5, -1, -1],
        right=[4, 3, -1, -1, 6, -1, -1],
        value=[[0.0], [0.0], [1.0], [2.0], [0.0], [3.0], [4.0]],
        strict=[True, False, False, False, True, False, False],  # x0 < 8, then x1 <= 5 or x1 < 5
    )
    ensemble = TreeEnsemble((tree,), 2)
    grid = np.array([[a, b] for a in range(16) for b in range(16)], dtype=np.float64)
    lowered = lower_ensemble(ensemble, n_bits=4, leaf_bits=4)
    digits = evaluate(lowered.graph, [lowered.encoding.encode(grid.astype(np.int64))])[0]
    scores = lowered.output_quantizer.dequantize(digits @ lowered.output_combine) + lowered.output_bias
    np.testing.assert_allclose(scores, ensemble.predict(grid), atol=1e-9)
    assert ensemble.predict([[7, 5], [8, 5], [8, 4]]).ravel().tolist() == [1.0, 4.0, 3.0]


def test_lowering_of_a_converted_boosted_model():
    rng = np.random.default_rng(3)
    X = rng.integers(0, 16, size=(400, 3)).astype(np.float64)
    y = ((X[:, 0] >= 8) ^ (X[:, 1] >= 5)).astype(int) + (X[:, 2] > 10)
    model = xgboost.XGBClassifier(n_estimators=4, max_depth=3, n_jobs=1).fit(X, y)
    ensemble = to_ensemble(model)
    lowered = lower_ensemble(ensemble, n_bits=4, leaf_bits=12)  # thresholds already on the 0..15 code grid
    digits = evaluate(lowered.graph, [lowered.encoding.encode(X.astype(np.int64))])[0]
    scores = lowered.output_quantizer.dequantize(digits @ lowered.output_combine) + lowered.output_bias
    np.testing.assert_allclose(scores, ensemble.predict(X), atol=len(ensemble.trees) * lowered.output_quantizer.scale.max())
    assert np.array_equal(np.argmax(scores, axis=1), model.predict(X))


# ------------------------------------------------------------------------------------ ONNX


def _export(family: str, model, n_features: int):
    if family == "XGBoost":
        return convert_xgboost(model, initial_types=[("x", FloatTensorType([None, n_features]))])
    if family == "LightGBM":
        return convert_lightgbm(model, initial_types=[("x", FloatTensorType([None, n_features]))], zipmap=False)
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    return skl2onnx.to_onnx(model, np.zeros((1, n_features), dtype=np.float32), options=options)


def _onnxruntime(onnx_model, X: np.ndarray, classifier: bool) -> np.ndarray:
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    outputs = session.run(None, {session.get_inputs()[0].name: X.astype(dtype)})
    scores = outputs[1] if classifier else outputs[0]
    if isinstance(scores, list):  # ZipMap: one {label: probability} per row
        scores = [[row[k] for k in sorted(row)] for row in scores]
    return np.asarray(scores, dtype=np.float64).reshape(len(X), -1)


ONNX_FAMILIES = ["DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "XGBoost", "LightGBM"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_from_onnx_equals_onnxruntime_and_the_library(family, kind):
    X, y, X_test = _data(kind)
    model = _model(family, kind).fit(X, y)
    exported = _export(family, model, X.shape[1])
    ensemble = from_onnx(exported)
    classifier = kind != "regression"
    assert ensemble.task == ("classification" if classifier else "regression")
    runtime = _onnxruntime(exported, X_test, classifier)
    np.testing.assert_allclose(_output(ensemble, X_test), runtime, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_output(ensemble, X_test), _reference(model, X_test), rtol=1e-5, atol=1e-5)
    # onnxruntime is also an independent oracle for the treelite path
    np.testing.assert_allclose(_output(to_ensemble(model), X_test), runtime, rtol=1e-5, atol=1e-5)
    edges = _boundary_rows(ensemble, X_test)
    np.testing.assert_allclose(_output(ensemble, edges), _onnxruntime(exported, edges, classifier), rtol=1e-5, atol=1e-5)


def test_from_onnx_zipmap_double_input_and_file(tmp_path):
    X, y, X_test = _data("multiclass")
    forest = RandomForestClassifier(random_state=0, **SMALL).fit(X, y)
    with_zipmap = skl2onnx.to_onnx(forest, X[:1].astype(np.float32))
    assert "ZipMap" in {n.op_type for n in with_zipmap.graph.node}
    path = tmp_path / "forest.onnx"
    path.write_bytes(with_zipmap.SerializeToString())
    ensemble = from_onnx(str(path))
    np.testing.assert_allclose(_output(ensemble, X_test), _onnxruntime(with_zipmap, X_test, True), atol=1e-5)

    double = skl2onnx.to_onnx(forest, X[:1])  # double input: float64 comparisons
    assert double.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    ensemble = from_onnx(double.SerializeToString())
    edges = _boundary_rows(ensemble, X_test)
    np.testing.assert_allclose(_output(ensemble, edges), _onnxruntime(double, edges, True), atol=1e-5)


def _tree_graph(
    op: str, attributes: dict, *, n_features: int = 2, elem_type: int = TensorProto.FLOAT, n_scores: int = 2, after=None
):
    """One-tree-operator graph; ``after`` adds a node reading the scores."""
    outputs = ["label", "scores"] if op == "TreeEnsembleClassifier" else ["scores"]
    nodes = [helper.make_node(op, ["X"], outputs, domain="ai.onnx.ml", **attributes)]
    graph_outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, n_scores])]
    initializers = []
    if after is not None:
        nodes[0].output[-1] = "raw"
        nodes.append(helper.make_node(after, ["raw", "c"], ["scores"]))
        initializers.append(helper.make_tensor("c", TensorProto.FLOAT, [], [2.0]))
    if op == "TreeEnsembleClassifier":
        graph_outputs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, [None]))
    graph = helper.make_graph(
        nodes,
        "trees",
        [helper.make_tensor_value_info("X", elem_type, [None, n_features])],
        graph_outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model


def _two_level(modes=("BRANCH_GTE", "BRANCH_GT", "LEAF", "LEAF", "LEAF"), tracks=(1, 0, 0, 0, 0)) -> dict:
    """root: x0 vs 0.3 -> (node 1: x1 vs -0.2 -> leaves 2, 3), leaf 4."""
    return dict(
        nodes_treeids=[0] * 5,
        nodes_nodeids=[0, 1, 2, 3, 4],
        nodes_featureids=[0, 1, 0, 0, 0],
        nodes_modes=list(modes),
        nodes_values=[0.3, -0.2, 0, 0, 0],
        nodes_truenodeids=[1, 2, 0, 0, 0],
        nodes_falsenodeids=[4, 3, 0, 0, 0],
        nodes_missing_value_tracks_true=list(tracks),
    )


@pytest.mark.parametrize(
    "case, extra",
    [
        (
            "one column, NONE, non-negative weights (forests)",
            dict(class_ids=[0, 0, 0], class_weights=[0.1, 0.6, 0.9], post_transform="NONE"),
        ),
        (
            "one column, NONE, base value",
            dict(class_ids=[0, 0, 0], class_weights=[0.1, 0.3, 0.6], base_values=[0.05], post_transform="NONE"),
        ),
        (
            "one column, LOGISTIC (boosting)",
            dict(class_ids=[0, 0, 0], class_weights=[-1.0, 0.5, 2.0], base_values=[0.25], post_transform="LOGISTIC"),
        ),
        (
            "two columns, SOFTMAX",
            dict(class_ids=[0, 1, 0, 1, 0, 1], class_weights=[1.0, -1.0, 0.2, 0.1, -2.0, 1.0], post_transform="SOFTMAX"),
        ),
    ],
)
def test_from_onnx_binary_layouts_and_node_modes(case, extra):
    """onnxruntime's binary classifier layouts, GTE/GT modes and NaN tracking on hand-built graphs."""
    n_weights = len(extra["class_ids"])
    leaves = [2, 3, 4] if n_weights == 3 else [2, 2, 3, 3, 4, 4]
    attributes = dict(_two_level(), class_treeids=[0] * n_weights, class_nodeids=leaves, classlabels_int64s=[0, 1], **extra)
    graph = _tree_graph("TreeEnsembleClassifier", attributes)
    ensemble = from_onnx(graph)
    grid = np.array(
        [[a, b] for a in (0.0, 0.3, np.float32(0.3) + 1e-9, 1.0, np.nan) for b in (-1.0, -0.2, 0.0, np.nan)], dtype=np.float64
    )
    np.testing.assert_allclose(_output(ensemble, grid), _onnxruntime(graph, grid, True), atol=1e-6)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(nodes_modes=["BRANCH_EQ", "BRANCH_LEQ", "LEAF", "LEAF", "LEAF"]), "node modes \\['BRANCH_EQ'\\]"),
        (dict(post_transform="SOFTMAX_ZERO"), "post_transform='SOFTMAX_ZERO'"),
        (dict(post_transform="LOGISTIC"), "per-class|sigmoid to a single binary margin"),
        (dict(class_ids=[0, 0, 0], class_weights=[-0.5, 0.2, 0.3]), "signed weights"),
        (dict(base_values=[0.1, 0.2]), "onnxruntime does not add them per class"),
    ],
)
def test_from_onnx_refuses_what_it_cannot_honour(change, match):
    attributes = dict(
        _two_level(("BRANCH_LEQ", "BRANCH_LEQ", "LEAF", "LEAF", "LEAF")),
        class_treeids=[0] * 6,
        class_nodeids=[2, 2, 3, 3, 4, 4],
        class_ids=[0, 1] * 3,
        class_weights=[0.3, 0.7, 0.5, 0.5, 0.9, 0.1],
        classlabels_int64s=[0, 1],
        post_transform="NONE",
    )
    if "class_ids" in change:
        attributes.update(class_treeids=[0] * 3, class_nodeids=[2, 3, 4])
    attributes.update(change)
    with pytest.raises(UnsupportedModelError, match=match):
        from_onnx(_tree_graph("TreeEnsembleClassifier", attributes))


def test_from_onnx_refuses_graph_changes_around_the_trees():
    regressor = dict(
        _two_level(("BRANCH_LEQ", "BRANCH_LEQ", "LEAF", "LEAF", "LEAF")),
        target_treeids=[0] * 3,
        target_nodeids=[2, 3, 4],
        target_ids=[0] * 3,
        target_weights=[1.0, 2.0, 3.0],
        n_targets=1,
    )
    assert from_onnx(_tree_graph("TreeEnsembleRegressor", regressor, n_scores=1)).n_outputs == 1
    with pytest.raises(UnsupportedModelError, match="scores go through Mul before reaching a graph output"):
        from_onnx(_tree_graph("TreeEnsembleRegressor", regressor, n_scores=1, after="Mul"))
    with pytest.raises(UnsupportedModelError, match="aggregates its trees with MAX"):
        from_onnx(_tree_graph("TreeEnsembleRegressor", {**regressor, "aggregate_function": "MAX"}, n_scores=1))
    with pytest.raises(UnsupportedModelError, match="predicts 2 targets"):
        from_onnx(_tree_graph("TreeEnsembleRegressor", {**regressor, "n_targets": 2}, n_scores=2))
    X, y, _ = _data("regression")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), RandomForestRegressor(random_state=0, **SMALL)).fit(X, y)
    with pytest.raises(UnsupportedModelError, match="read their input through Scaler.*without its preprocessing"):
        from_onnx(skl2onnx.to_onnx(pipeline, X[:1].astype(np.float32)))


# ------------------------------------------------------------------------------------ refusals


def _fit(model, kind="binary", **fit_kwargs):
    X, y, _ = _data(kind)
    return model.fit(X, y, **fit_kwargs)


def _categorical_data():
    X, y, _ = _data("binary")
    X = X.copy()
    X[:, 1] = (X[:, 1] > 0).astype(int) * 2 + (X[:, 2] > 0)  # a 4-level categorical feature that matters
    y = np.where(X[:, 1] >= 2, 1 - y, y)
    return X, y


def test_refuses_categorical_splits():
    X, y = _categorical_data()
    lgbm = lightgbm.LGBMClassifier(n_jobs=1, verbose=-1, min_data_per_group=5, **SMALL).fit(X, y, categorical_feature=[1])
    with pytest.raises(
        UnsupportedModelError, match="categorical feature.*encode categories as numbers and fit without categorical_feature"
    ):
        to_ensemble(lgbm)
    hist = HistGradientBoostingClassifier(max_iter=5, categorical_features=[1]).fit(X, y)
    with pytest.raises(UnsupportedModelError, match="categorical features.*categorical_features=None"):
        to_ensemble(hist)
    pandas = require("pandas", "test")
    frame = pandas.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    frame["f1"] = frame["f1"].astype(int).astype("category")
    xgb = xgboost.XGBClassifier(enable_categorical=True, tree_method="hist", n_jobs=1, **SMALL).fit(frame, y)
    with pytest.raises(UnsupportedModelError, match="categorical features.*enable_categorical=False"):
        to_ensemble(xgb)


def test_refuses_multi_output_models():
    X, y, _ = _data("regression")
    Y = np.c_[y, -y]
    for model in (
        RandomForestRegressor(random_state=0, **SMALL),
        ExtraTreesRegressor(random_state=0, **SMALL),
        DecisionTreeRegressor(max_depth=3),
    ):
        with pytest.raises(UnsupportedModelError, match="multi-output.*fit one model per target"):
            to_ensemble(model.fit(X, Y))
    Xc, yc, _ = _data("binary")
    with pytest.raises(UnsupportedModelError, match="multi-output"):
        to_ensemble(RandomForestClassifier(random_state=0, **SMALL).fit(Xc, np.c_[yc, 1 - yc]))
    with pytest.raises(UnsupportedModelError, match="predicts 2 targets.*fit one model per target"):
        to_ensemble(xgboost.XGBRegressor(n_jobs=1, **SMALL).fit(X, Y))
    multi = xgboost.XGBClassifier(multi_strategy="multi_output_tree", tree_method="hist", n_jobs=1, **SMALL)
    with pytest.raises(UnsupportedModelError, match="multi_strategy='one_output_per_tree'"):
        to_ensemble(_fit(multi, "multiclass"))


REFUSED = [
    (
        "HistGB poisson",
        lambda: HistGradientBoostingRegressor(loss="poisson", max_iter=5),
        "counts",
        "loss='poisson'.*exp\\(raw score\\)",
    ),
    (
        "XGB count:poisson",
        lambda: xgboost.XGBRegressor(objective="count:poisson", n_jobs=1, **SMALL),
        "counts",
        "outputs exponential\\(raw score\\)",
    ),
    (
        "XGB logitraw",
        lambda: xgboost.XGBClassifier(objective="binary:logitraw", n_jobs=1, **SMALL),
        "binary",
        "raw margin, not a probability",
    ),
    (
        "LGB multiclassova",
        lambda: lightgbm.LGBMClassifier(objective="multiclassova", n_jobs=1, verbose=-1, **SMALL),
        "multiclass",
        "outputs multiclass_ova",
    ),
    (
        "LGB linear trees",
        lambda: lightgbm.LGBMRegressor(linear_tree=True, n_jobs=1, verbose=-1, **SMALL),
        "regression",
        "linear_tree=False",
    ),
    (
        "XGB gblinear",
        lambda: xgboost.XGBRegressor(booster="gblinear", n_estimators=3, n_jobs=1),
        "regression",
        "booster='gblinear'",
    ),
    ("XGB missing=0", lambda: xgboost.XGBClassifier(missing=0.0, n_jobs=1, **SMALL), "binary", "missing=0.0.*missing=np.nan"),
    (
        "GB custom init",
        lambda: GradientBoostingRegressor(init=LinearRegression(), **SMALL),
        "regression",
        "custom init estimator.*init=None",
    ),
    ("IsolationForest", lambda: IsolationForest(n_estimators=5, random_state=0), "binary", "no converter for .*IsolationForest"),
]


@pytest.mark.parametrize("name, make, kind, match", REFUSED, ids=[case[0] for case in REFUSED])
def test_refuses_output_functions_and_features_it_cannot_express(name, make, kind, match):
    X, y, _ = _data("regression" if kind == "counts" else kind)
    if kind == "counts":
        y = np.abs(y) // 10
    with pytest.raises(UnsupportedModelError, match=match):
        to_ensemble(make().fit(X, y))


def test_refuses_lightgbm_zero_as_missing_splits():
    X, y, _ = _data("regression")
    X = X.copy()
    X[::3, 0] = 0.0
    y = y + 100 * (X[:, 0] == 0)
    model = lightgbm.LGBMRegressor(zero_as_missing=True, n_jobs=1, verbose=-1, **SMALL).fit(X, y)
    with pytest.raises(UnsupportedModelError, match="zero_as_missing=True.*fit with zero_as_missing=False"):
        to_ensemble(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_unfitted_models_are_refused(family):
    for kind in ("binary", "regression"):
        with pytest.raises(NotFittedError, match="is not fitted; call its 'fit' first"):
            to_ensemble(_model(family, kind))
    assert issubclass(NotFittedError, ValueError)


def test_empty_booster_and_unsupported_types():
    with pytest.raises(ValueError, match="no trees .*not fitted"):
        to_ensemble(xgboost.Booster())
    with pytest.raises(
        UnsupportedModelError,
        match="supported models: DecisionTreeClassifier, .*XGBClassifier.*LGBMRegressor, lightgbm.Booster .*from_onnx",
    ):
        to_ensemble(LogisticRegression())
    assert issubclass(UnsupportedModelError, TypeError) and issubclass(UnsupportedModelError, ValueError)
