"""``tree_program(split=k)``: path indicators above multiplexers compute the same sums one level shallower."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from veilml.models.trees.batch import encode_codes, matching_leaves, tree_program
from veilml.models.trees.estimators import DecisionTreeClassifier, DecisionTreeRegressor, RandomForestClassifier

CASES = {
    "tree": (DecisionTreeClassifier, {"max_depth": 5, "random_state": 0}, load_breast_cancer),
    "regressor": (DecisionTreeRegressor, {"max_depth": 5, "random_state": 0}, load_diabetes),
    "forest": (RandomForestClassifier, {"n_estimators": 4, "max_depth": 4, "random_state": 0}, load_breast_cancer),
}


@pytest.mark.parametrize("name", list(CASES))
def test_split_trees_sum_the_same_integers(name):
    cls, params, load = CASES[name]
    X, y = load(return_X_y=True)
    model = cls(n_bits=6, **params).fit(X, y)
    leaves = matching_leaves(model)
    bits = encode_codes(model.fhe_model_.codec.input_quantizer.quantize(X), "digits", 6)
    programs = [tree_program(model.ensemble_, leaves.values, 6, "digits", split).program for split in range(4)]
    expected = programs[0].evaluate(bits, 65537)
    for program in programs[1:]:
        np.testing.assert_array_equal(program.evaluate(bits, 65537), expected)
    assert programs[0].depth == params["max_depth"]  # a multiplexer chain in digits: as deep as the trees
    assert programs[2].depth == programs[0].depth - 1  # one level less, for a few more products
    assert programs[2].n_products > programs[0].n_products
