"""The value leaf stages: one lookup per pair of sibling leaves, or per subtree of several tests, that
returns the leaf value itself.

The oracle: on every row of the code grid, the value stages' integers recombine to exactly the
indicators lowering's scores (both sum the same quantized leaf values), on random ensembles and on
hand-made trees with awkward shapes; ``simulate`` equals ``disable``, ``execute`` equals
``simulate``; ``compile`` keeps the candidate concrete finds cheaper; and the IR's per-element
tables behave the same in the interpreter, the range analysis, serialization and concrete.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from requires import require

import veilml
from veilml.compiler import GraphBuilder, IRError, Ops, compile_graph, evaluate, infer_ranges
from veilml.compiler.serialize import graph_from_bytes, graph_to_bytes
from veilml.models.trees import Tree, TreeEnsemble, lower_ensemble
from veilml.models.trees.lowering.ensemble import lower_candidates

require("treelite", "trees")
pytestmark = pytest.mark.usefixtures("no_clip_warning")  # held-out rows beyond the training range are clipped


def _scores(lowered, codes: np.ndarray) -> np.ndarray:
    """The integer scores a lowering computes on rows of codes (digits recombined)."""
    integers = evaluate(lowered.graph, [lowered.encoding.encode(codes)])[0]
    return integers @ lowered.output_combine


def _grid(n_features: int, n_bits: int, rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**n_bits, size=(rows, n_features))


# ------------------------------------------------------------------------------ IR: per-element tables
def test_per_element_tables_in_the_interpreter_ranges_and_serialization():
    g = GraphBuilder()
    x = g.input("x", np.zeros(3), np.full(3, 3))
    tables = np.array([[5, 0, 0, 1], [0, 7, 0, 0], [2, 2, 9, 2]])
    y = g.lut(x, tables)
    g.output(y)
    graph = g.build()
    rows = np.array([[0, 1, 2], [3, 0, 1], [1, 1, 1]])
    assert evaluate(graph, [rows])[0].tolist() == [[5, 7, 9], [1, 0, 2], [0, 7, 2]]
    ranges = infer_ranges(graph)
    assert ranges[y].low.tolist() == [0, 0, 2] and ranges[y].high.tolist() == [5, 7, 9]
    again = graph_from_bytes(graph_to_bytes(graph))
    assert np.array_equal(again.nodes[y].arg[0], tables)
    assert evaluate(again, [rows])[0].tolist() == evaluate(graph, [rows])[0].tolist()


def test_per_element_tables_need_one_row_per_element():
    g = GraphBuilder()
    x = g.input("x", np.zeros(3), np.full(3, 3))
    g.output(g.lut(x, np.zeros((2, 4), dtype=np.int64)))
    with pytest.raises(IRError, match="one row per element"):
        g.build()


def test_per_element_tables_in_concrete_equal_the_interpreter(test_config):
    g = GraphBuilder()
    x = g.input("x", np.zeros(4), np.full(4, 7))
    s = g.add(g.gather(x, [0, 1, 2]), g.gather(x, [3, 3, 3]))  # 0..14: 4 bits
    tables = np.random.default_rng(0).integers(0, 20, size=(3, 15))
    g.output(g.matmul(g.lut(s, tables), np.ones((3, 1), dtype=np.int64)))
    graph = g.build()
    rows = _grid(4, 3, 40, seed=1)
    compiled = compile_graph(graph, [rows], test_config)
    assert np.array_equal(compiled.simulate([rows])[0], evaluate(graph, [rows])[0])


# ------------------------------------------------------------------------------ the paired lowering
def _tree(feature, threshold, left, right, value) -> Tree:
    return Tree(feature=feature, threshold=threshold, left=left, right=right, value=np.asarray(value, dtype=float))


def _awkward_trees() -> list[Tree]:
    """Right leaves numbered before their left siblings, a parent test no code can fail, a
    sibling made unreachable by a test higher up on the same feature, and a lone leaf."""
    right_first = _tree(
        [0, -1, 1, -1, -1], [7.5, 0, 3.5, 0, 0], [2, -1, 4, -1, -1], [1, -1, 3, -1, -1], [[0], [5], [0], [3], [9]]
    )
    always_right = _tree([0, -1, -1], [-1.0, 0, 0], [1, -1, -1], [2, -1, -1], [[0], [4], [6]])
    unreachable = _tree(  # x0 <= 4.5, then x0 <= 9.5: the right leaf under it is never reached
        [0, 0, -1, -1, -1], [4.5, 9.5, 0, 0, 0], [1, 2, -1, -1, -1], [4, 3, -1, -1, -1], [[0], [0], [2], [11], [1]]
    )
    lone_and_pair = _tree(
        [1, -1, 2, -1, -1], [5.5, 0, 10.5, 0, 0], [1, -1, 3, -1, -1], [2, -1, 4, -1, -1], [[0], [8], [0], [1], [6]]
    )
    return [right_first, always_right, unreachable, lone_and_pair]


def _deep_tree(seed: int, depth: int = 5) -> Tree:
    """A full tree on 3 features whose tests repeat features and thresholds (contradictory and
    redundant paths), with the right child numbered before the left one."""
    rng = np.random.default_rng(seed)
    feature, threshold, left, right, value = [], [], [], [], []

    def node(d: int) -> int:
        i = len(feature)
        feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1), value.append([0.0])
        if d == depth:
            value[i] = [float(rng.integers(0, 40))]
            return i
        feature[i], threshold[i] = int(rng.integers(0, 3)), float(rng.choice([-1.0, 3.5, 7.5, 11.5, 40.0]))
        right[i] = node(d + 1)
        left[i] = node(d + 1)
        return i

    node(0)
    return _tree(feature, threshold, left, right, value)


@pytest.mark.parametrize("stage", ["paired", "subtrees"])
@pytest.mark.parametrize("n_bits", [4, 5])
def test_value_stages_equal_indicators_on_awkward_trees(n_bits, stage):
    ensemble = TreeEnsemble(tuple(_awkward_trees()) + (_deep_tree(n_bits), _deep_tree(n_bits + 10, depth=4)), 3)
    codes = np.array(np.meshgrid(*[np.arange(2**n_bits)] * 3)).reshape(3, -1).T
    indicators = lower_ensemble(ensemble, n_bits, 6, leaf_lookups="indicators")
    values = lower_ensemble(ensemble, n_bits, 6, leaf_lookups=stage)
    assert np.array_equal(_scores(values, codes), _scores(indicators, codes))
    assert np.array_equal(values.output_quantizer.zero_point, indicators.output_quantizer.zero_point)
    lookups = sum(n.size for n in values.graph.nodes if n.op is Ops.LUT)
    assert lookups <= sum(n.size for n in indicators.graph.nodes if n.op is Ops.LUT)
    if stage == "subtrees":  # the deep trees' subtrees fit in 5 bits: fewer lookups than pairs of 3 bits
        assert lookups < sum(
            n.size for n in lower_ensemble(ensemble, n_bits, 6, leaf_lookups="paired").graph.nodes if n.op is Ops.LUT
        )
        assert "subtrees of 2-" in values.stages["leaf selection"]


def test_a_single_tree_equals_its_subtree_lookups():
    """One deep tree alone: the subtree stage's score is the reached leaf's value on every code."""
    tree = _deep_tree(3)
    ensemble = TreeEnsemble((tree,), 3)
    codes = np.array(np.meshgrid(*[np.arange(16)] * 3)).reshape(3, -1).T
    lowered = lower_ensemble(ensemble, 4, 6, leaf_lookups="subtrees")
    leaf_value = lower_ensemble(ensemble, 4, 6, leaf_lookups="indicators")
    assert np.array_equal(_scores(lowered, codes), _scores(leaf_value, codes))
    assert max(n.arg[0].shape[-1] for n in lowered.graph.nodes if n.op is Ops.LUT) <= 32  # 5-bit lookups at most


def test_a_tree_deeper_than_the_recursion_limit_lowers():
    """A chain of splits on one feature deeper than Python's recursion limit: the value stages walk
    the tree without recursion, and still score every code like the leaf indicators."""
    depth = sys.getrecursionlimit() + 100
    feature, threshold, left, right, value = [], [], [], [], []
    for d in range(depth):  # node 2d tests x0 <= d + 0.5: its left child is a leaf, its right the next test
        i = len(feature)
        feature += [0, -1]
        threshold += [d + 0.5, 0.0]
        left += [i + 1, -1]
        right += [i + 2, -1]
        value += [[0.0], [float(d % 7)]]
    feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1), value.append([3.0])
    ensemble = TreeEnsemble((_tree(feature, threshold, left, right, value),), 1)
    n_bits = int(np.ceil(np.log2(depth + 2)))
    codes = np.unique(np.r_[0, 2**n_bits - 1, _grid(1, n_bits, 100, seed=2)[:, 0]])[
        :, None
    ]  # the interpreter's matmuls are slow here
    subtrees = lower_ensemble(ensemble, n_bits, 6, leaf_lookups="subtrees")
    assert np.array_equal(
        _scores(subtrees, codes), _scores(lower_ensemble(ensemble, n_bits, 6, leaf_lookups="indicators"), codes)
    )


@pytest.mark.parametrize(
    "name, params, data",
    [
        ("RandomForestClassifier", {"n_estimators": 8, "max_depth": 4}, "cancer"),
        ("XGBClassifier", {"n_estimators": 8, "max_depth": 4, "n_jobs": 1}, "cancer"),
        ("XGBRegressor", {"n_estimators": 6, "max_depth": 3, "n_jobs": 1}, "diabetes"),
        ("RandomForestClassifier", {"n_estimators": 4, "max_depth": 3}, "iris"),  # every leaf scores 3 classes
        ("XGBClassifier", {"n_estimators": 4, "max_depth": 4, "n_jobs": 1}, "iris"),  # a tree per class and round
        ("DecisionTreeClassifier", {"max_depth": 5}, "cancer"),
    ],
)
def test_paired_equals_indicators_on_fitted_ensembles(name, params, data, cancer, diabetes):
    from sklearn.datasets import load_iris

    if data == "iris":
        X_train, y_train = load_iris(return_X_y=True)
        X_test = X_train
    else:
        X_train, X_test, y_train, _ = {"cancer": cancer, "diabetes": diabetes}[data]
    scores, lookups = {}, {}
    for leaf_lookups in ("indicators", "paired", "subtrees"):
        model = getattr(veilml, name)(n_bits=5, leaf_bits=5, leaf_lookups=leaf_lookups, random_state=0, **params)
        model.fit(X_train, y_train)
        scores[leaf_lookups] = model.decision_scores(X_test)
        lookups[leaf_lookups] = sum(n.size for n in model.fhe_model_.graph.nodes if n.op is Ops.LUT)
    assert np.allclose(scores["paired"], scores["indicators"], rtol=0, atol=1e-9)
    assert np.allclose(scores["subtrees"], scores["indicators"], rtol=0, atol=1e-9)
    if name.startswith("RandomForest") and data == "iris":  # a value lookup per class: "auto" does not even try it
        assert lookups["paired"] > lookups["indicators"]
        auto = getattr(veilml, name)(n_bits=5, random_state=0, **params).fit(X_train, y_train)
        assert len(auto._candidates) == 1
    elif params.get("max_depth") == 4:  # depth-4 trees: pairs fit in the same 3-bit lookups, one per class scored
        assert lookups["subtrees"] < lookups["paired"] < lookups["indicators"]


def test_auto_compiles_each_candidate_and_keeps_the_cheapest(cancer, test_config):
    X_train, X_test, y_train, _ = cancer

    def forest(**params):
        return veilml.RandomForestClassifier(n_estimators=8, max_depth=4, n_bits=5, random_state=0, **params).fit(
            X_train, y_train
        )

    auto = forest()
    kinds = ("indicators", "paired", "subtrees")
    # pairs save more than a fifth of the lookups, subtrees over two fifths of the rest; then the indicators with
    # one-bit digits and the prefixes (2-bit lookups), compiled only under a tight error budget (not this one)
    assert auto._low_error_only == [False, False, False, True, True]
    # the candidates share the (n_bits + 1)-bit score: the same decision scores
    first = auto._candidates[0][0].run(X_test, "disable")
    assert all(np.allclose(model.run(X_test, "disable"), first) for model, _ in auto._candidates[1:])
    assert auto.leaf_bits_ < 5  # 8 trees share a 6-bit score
    before = auto.decision_scores(X_test)
    auto.compile(X_train, test_config)
    each = {kind: forest(leaf_lookups=kind).compile(X_train, test_config).report_.complexity for kind in kinds}
    assert auto.report_.complexity == min(each.values())
    assert [model.compiled is not None for model, _ in auto._candidates].count(True) == 1  # the other circuit is freed
    assert np.allclose(auto.decision_scores(X_test), before)
    assert np.array_equal(auto.predict_integers(X_test, "simulate"), auto.predict_integers(X_test, "disable"))
    # a single depth-5 tree has no pair whose lookup fits in 3 bits; its 5-bit subtrees are tried
    # and cost more than its 3-bit leaf indicators
    tree = veilml.DecisionTreeClassifier(max_depth=5, n_bits=5, random_state=0).fit(X_train, y_train)
    assert [stages["leaf selection"].split(" ")[1] for _, stages in tree._candidates] == ["leaf", "value", "leaf"]
    assert tree._low_error_only == [False, False, True] and "on 2 bits" in tree._candidates[2][1]["leaf selection"]
    tree.compile(X_train, test_config)
    assert "failed tests == 0" in tree.lowering_["leaf selection"]


def test_auto_keeps_the_subtrees_of_a_deep_regressor(diabetes, test_config):
    """The benchmark's depth-5 regressor: 8 subtree lookups of 5 bits cost less than 27 leaf
    indicators of 3 bits, and ``auto`` keeps them."""
    X_train, X_test, y_train, _ = diabetes
    auto = veilml.DecisionTreeRegressor(max_depth=5, n_bits=6, random_state=0).fit(X_train, y_train)
    # the indicators and the subtrees (the pairs save too little); the prefixes only under a tight error budget
    assert auto._low_error_only == [False, False, True]
    before = auto.predict(X_test)
    auto.compile(X_train, test_config)
    indicators = veilml.DecisionTreeRegressor(max_depth=5, n_bits=6, leaf_lookups="indicators", random_state=0)
    indicators.fit(X_train, y_train).compile(X_train, test_config)
    assert "subtrees of 2-" in auto.lowering_["leaf selection"]
    assert auto.report_.pbs_count < indicators.report_.pbs_count / 3
    assert auto.report_.complexity < 0.8 * indicators.report_.complexity
    assert np.array_equal(auto.predict(X_test), before)
    assert np.array_equal(auto.predict_integers(X_test, "simulate"), auto.predict_integers(X_test, "disable"))


@pytest.mark.parametrize("stage, named", [("paired", "pairs of sibling leaves"), ("subtrees", "subtrees of 2-")])
def test_value_stages_reveal_one_value_per_output(cancer, stage, named):
    """Digit columns tell the client more than the score (each digit's sum over the trees); a
    value stage's output is the score itself."""
    X_train, _, y_train, _ = cancer
    model = veilml.XGBClassifier(n_estimators=8, max_depth=4, n_jobs=1, leaf_lookups=stage, random_state=0)
    model.fit(X_train, y_train)
    graph = model.fhe_model_.graph
    assert sum(graph.nodes[i].size for i in graph.outputs) == 1
    assert named in model.lowering_["leaf selection"]


def test_leaf_lookups_is_validated(cancer):
    X_train, _, y_train, _ = cancer
    with pytest.raises(ValueError, match="leaf_lookups"):
        veilml.RandomForestClassifier(leaf_lookups="pairs").fit(X_train, y_train)
    deep = veilml.DecisionTreeClassifier(max_depth=8, random_state=0).fit(X_train, y_train)
    with pytest.raises(ValueError, match="leaf_lookups"):
        lower_candidates(deep.ensemble_, 6, 6, leaf_lookups="pairs")


@pytest.mark.execute
def test_execute_equals_simulate_paired(cancer, test_config):
    X_train, X_test, y_train, _ = cancer
    model = veilml.XGBClassifier(n_estimators=3, max_depth=3, n_bits=4, n_jobs=1, leaf_lookups="paired", random_state=0)
    model.fit(X_train, y_train).compile(X_train, test_config)
    rows = X_test[:2]
    assert np.array_equal(model.predict_integers(rows, "execute"), model.predict_integers(rows, "simulate"))
    assert np.array_equal(model.predict(rows, "execute"), model.predict(rows, "disable"))


@pytest.mark.execute
def test_execute_equals_simulate_subtrees(diabetes, test_config):
    X_train, X_test, y_train, _ = diabetes
    model = veilml.DecisionTreeRegressor(max_depth=3, n_bits=4, leaf_lookups="subtrees", random_state=0)
    model.fit(X_train, y_train).compile(X_train, test_config)
    assert model.report_.pbs_count <= 2  # a depth-3 tree: two subtrees of 3 tests under the root
    rows = X_test[:2]
    assert np.array_equal(model.predict_integers(rows, "execute"), model.predict_integers(rows, "simulate"))
    assert np.allclose(model.predict(rows, "execute"), model.predict(rows, "disable"))
