"""veilml's own hyper-parameters of every tree estimator: defaults, types, constraints and documentation.

The library's hyper-parameters follow them in each estimator's signature; the classes are written
by ``scripts/generate_estimators.py`` from :data:`VEILML_PARAMS`, :data:`VEILML_PARAM_TYPES` and
:data:`PARAMETERS_DOC`, and the libraries' own signatures.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["PARAMETERS_DOC", "PARAMETER_CONSTRAINTS", "VEILML_PARAMS", "VEILML_PARAM_TYPES"]

#: veilml's own parameters and their defaults, first in every estimator's signature
VEILML_PARAMS: dict[str, Any] = {
    "n_bits": 6,
    "leaf_bits": None,
    "encoding": "thermometer",
    "leaf_lookups": "auto",
    "train_on": "codes",
}

#: their annotations in the generated signatures
VEILML_PARAM_TYPES: dict[str, str] = {
    "n_bits": 'int | Literal["auto"]',
    "leaf_bits": "int | None",
    "encoding": 'Literal["thermometer", "identity", "chunked", "auto", "thresholds"]',
    "leaf_lookups": 'Literal["indicators", "paired", "subtrees", "prefixes", "auto"]',
    "train_on": 'Literal["codes", "float"]',
}

#: checked by ``fit`` (scikit-learn's ``_validate_params``); the estimators' API names, converted to
#: the lowering's enums once (:mod:`veilml.models.trees.lowering.options`)
PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {
    "n_bits": [Interval(Integral, 2, 12, closed="both"), StrOptions({"auto"})],
    "leaf_bits": [Interval(Integral, 1, 16, closed="both"), None],
    "encoding": [StrOptions({"thermometer", "identity", "chunked", "auto", "thresholds"})],
    "leaf_lookups": [StrOptions({"indicators", "paired", "subtrees", "prefixes", "auto"})],
    "train_on": [StrOptions({"codes", "float"})],
}

#: every estimator's docstring, formatted with its ``name`` and its library's ``module``
PARAMETERS_DOC = """An encrypted {name}: a {module}.{name} trained on quantized inputs, run in FHE.

Parameters:
    n_bits: input precision: each feature is quantized to ``n_bits`` unsigned bits, or ``"auto"``
        to choose, by cross-validation, the cheapest precisions (estimated circuit complexity) whose
        metric stays within a tolerance of the best one tried (``auto_bits_report_`` lists each).
    leaf_bits: precision of each tree's quantized leaf values. By default ``n_bits``, except for
        an ensemble for which a value leaf stage (pairs or subtrees) is compiled (see
        ``leaf_lookups``): its leaves then share the scale that makes the summed score an
        ``n_bits + 1``-bit integer (each tree gets ``leaf_bits_``, at most ``n_bits``), because
        that score's width sets concrete's parameters.
    encoding: what the client encrypts: ``"thermometer"`` (every comparison is free; larger
        ciphertexts), ``"chunked"`` (a thermometer code of a high and a low chunk of each
        feature: ~4x fewer bits at 6 bits, one 2-bit lookup per threshold off a chunk boundary),
        ``"identity"`` (one comparison lookup per distinct threshold), or ``"auto"``: the one the
        cost model (:mod:`veilml.compiler.cost`) estimates fastest per row. Each is independent
        of the model's thresholds; with ``"chunked"`` and ``"auto"`` the *choice* of encoding is
        made from the model's costs, which tells the client that much (see ``fhe_report()``).
        ``"thresholds"`` (opt-in, model-dependent) encrypts only the comparisons the model
        makes, ``[q_f >= k]`` per split point: the fewest ciphertexts by far, but the client-side
        codec lists the model's split points on the code grid (not the tree's structure or its
        leaf values), so use it only where the client may know them.
    leaf_lookups: how leaves are looked up: ``"indicators"`` (one small lookup per leaf, values
        applied afterwards by a clear matrix), ``"paired"`` (one lookup per pair of sibling leaves
        that returns the leaf value itself: fewer lookups, costlier parameters), ``"subtrees"``
        (one lookup of up to 5 bits per subtree of several tests: fewer still, each costlier),
        ``"prefixes"`` (every lookup on 2 bits: a leaf of more than 3 tests reads an ancestor's
        indicator; more lookups, each cheaper under a tight error budget), or ``"auto"``
        (default): ``compile`` compiles the indicators and each value stage that saves enough
        lookups (pairs: a fifth; subtrees: two fifths), and, under a global p_error below 1e-7,
        the indicators with one-bit digits and the prefixes too; it keeps the one with the
        lowest complexity. Every choice computes the same scores.
    train_on: ``"codes"`` (train on the quantized features) or ``"float"`` (train on the float
        features, then round each threshold to a code boundary; closer to the float model's
        accuracy at a given ``n_bits``, which ``n_bits="auto"`` then tends to choose larger).
    Every other parameter is passed to :class:`{module}.{name}` unchanged.
"""
