"""scikit-learn ensembles, XGBoost and LightGBM -> TreeEnsemble, through treelite.

treelite (>= 4.8) imports all three libraries into one model representation:
``treelite.sklearn.import_model`` (RandomForest, ExtraTrees, GradientBoosting,
HistGradientBoosting), ``treelite.frontend.from_xgboost`` and ``from_lightgbm``. Its arrays are read
with treelite's field accessors (``get_header_accessor`` / ``get_tree_accessor``: the fields of its
v4 serialization format), which are exact; ``dump_as_json`` prints the same fields but writes an
empty value for an infinite threshold (HistGradientBoosting trained with NaN), which is not JSON.

What treelite leaves to its caller, or gets wrong, is handled here, each case checked against the
source library's own ``predict`` / ``predict_proba`` in ``tests/trees/test_tree_converters.py``:

- input precision: scikit-learn forests and gradient boosting cast inputs to float32 and XGBoost
  stores float32 thresholds; their tests are rewritten into exact float64 tests
  (:func:`float32_tests`). HistGradientBoosting and LightGBM compare float64 inputs;
- learning rates, initial predictions (``base_scores``), forest averaging and LightGBM's
  ``sigmoid`` parameter are folded into leaf values and ``base_score``;
- XGBoost's scikit-learn API predicts with ``best_iteration`` after early stopping (the booster is
  sliced the same way); a plain ``Booster`` predicts with every tree;
- refused with :class:`UnsupportedModelError`, naming the fix: categorical features or splits,
  several targets or multi-output trees, output functions other than identity / sigmoid /
  softmax (Poisson, Gamma, Tweedie, one-vs-all, ...), LightGBM linear trees and
  ``zero_as_missing`` splits that send 0 elsewhere than their threshold does, XGBoost's
  ``gblinear`` and a ``missing`` value other than NaN, GradientBoosting with a custom ``init``.

treelite, xgboost and lightgbm are imported only when a model of theirs is converted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from veilml.models.trees.convert.arrays import UnsupportedModelError, float32_tests, make_tree
from veilml.models.trees.ensemble import Tree, TreeEnsemble

__all__ = ["convert_lightgbm", "convert_sklearn_ensemble", "convert_xgboost", "from_treelite"]

# treelite's enums (treelite/enum/*.h)
_TASK_TYPES = {
    0: "binary classifier",
    1: "regressor",
    2: "multi-class classifier",
    3: "learning-to-rank model",
    4: "isolation forest",
}
_LEAF, _NUMERICAL, _CATEGORICAL = 0, 1, 2
_EQ, _LT, _LE, _GT, _GE = 1, 2, 3, 4, 5
_POST_TRANSFORMS = {"identity": "identity", "identity_multiclass": "identity", "sigmoid": "sigmoid", "softmax": "softmax"}
_INSTALL = "pip install 'veilml[trees]'"


def _import_treelite() -> Any:
    try:
        import treelite
        import treelite.sklearn  # noqa: F401  (registers the submodule)
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"converting this model needs treelite: {_INSTALL}") from error
    return treelite


# --------------------------------------------------------------------------------- treelite


def from_treelite(
    tl_model: Any,
    *,
    float32_inputs: bool,
    task: str | None = None,
    source: str = "this model",
) -> TreeEnsemble:
    """A treelite model as a :class:`TreeEnsemble`.

    Args:
        tl_model: a ``treelite.Model``.
        float32_inputs: True when the source library casts inputs to float32 before comparing
            (its tests are then rewritten as exact float64 tests).
        task: ``"classification"`` / ``"regression"``; default: treelite's task type.
        source: how error messages name the model.
    """
    header = tl_model.get_header_accessor()
    outputs = _read_outputs(header, task, source)
    class_id = header.get_field("class_id")
    trees = [
        _read_tree(tl_model.get_tree_accessor(t), int(class_id[t]), outputs, float32_inputs, source)
        for t in range(int(tl_model.num_tree))
    ]
    return TreeEnsemble(
        tuple(trees),
        int(header.get_field("num_feature")[0]),
        split="<=",
        base_score=outputs.base,
        post_transform=outputs.post_transform,
        task=outputs.task,
    )


@dataclass(frozen=True)
class _Outputs:
    """What a treelite header says about the scores: their number, task and output function, and the
    factors folded into leaf values (forest averaging, LightGBM's sigmoid parameter)."""

    n_outputs: int
    task: str
    post_transform: str
    scale: np.ndarray  # per output: 1 / the number of trees adding to it when the forest averages them
    alpha: float
    base: np.ndarray


def _read_outputs(header: Any, task: str | None, source: str) -> _Outputs:
    """The header's outputs, refusing what the client cannot compute after decryption."""
    task_type = int(header.get_field("task_type")[0])
    if task_type not in (0, 1, 2):
        raise UnsupportedModelError(
            f"{source} is a {_TASK_TYPES.get(task_type, f'task type {task_type}')}; veilml converts regressors and classifiers"
        )
    num_target = int(header.get_field("num_target")[0])
    if num_target != 1:
        raise UnsupportedModelError(
            f"{source} predicts {num_target} targets (multi-output); veilml converts single-output "
            "models: fit one model per target"
        )
    n_outputs = int(header.get_field("num_class")[0])
    if task is None:
        task = "regression" if task_type == 1 else "classification"
    postprocessor = header.get_field("postprocessor")
    post_transform = _POST_TRANSFORMS.get(postprocessor)
    if post_transform is None:
        raise UnsupportedModelError(
            f"{source} outputs {postprocessor}(raw score); veilml's client applies only the identity, "
            "a sigmoid or a softmax after decryption: train with a squared-error / absolute-error / "
            "quantile loss (regression) or a logistic / softmax objective (classification)"
        )
    if task == "classification" and n_outputs == 1 and post_transform != "sigmoid":
        raise UnsupportedModelError(
            f"{source} is a binary classifier whose output is a raw margin, not a probability; "
            "train it with a logistic objective (e.g. XGBoost objective='binary:logistic')"
        )
    if np.any(header.get_field("target_id") > 0):
        raise UnsupportedModelError(f"{source} has trees for several targets; veilml converts single-output models")
    # how many trees add to each output: forests average over them
    contributors = np.zeros(n_outputs)
    for c in header.get_field("class_id"):
        if c < 0:
            contributors += 1
        else:
            contributors[int(c)] += 1
    scale = np.ones(n_outputs)
    if bool(header.get_field("average_tree_output")[0]):
        scale = 1.0 / np.maximum(contributors, 1)
    alpha = float(header.get_field("sigmoid_alpha")[0]) if post_transform == "sigmoid" else 1.0
    base = np.asarray(header.get_field("base_scores"), dtype=np.float64).reshape(-1)[:n_outputs] * alpha
    return _Outputs(n_outputs, task, post_transform, scale, alpha, base)


def _read_tree(fields: Any, c: int, outputs: _Outputs, float32_inputs: bool, source: str) -> Tree:
    """One tree of a treelite model (``c``: the output it adds to, or -1 for a leaf vector of every output)."""
    get = fields.get_field
    node_type = np.asarray(get("node_type"))
    if bool(get("has_categorical_split")[0]) or np.any(node_type == _CATEGORICAL):
        raise UnsupportedModelError(
            f"{source} has categorical splits; veilml compares numbers only: encode categories as "
            "numbers (e.g. ordinal codes) and fit without categorical features"
        )
    inner = node_type == _NUMERICAL
    cmp = np.asarray(get("cmp"))
    if np.any(inner & ~np.isin(cmp, (_LT, _LE, _GT, _GE))):
        raise UnsupportedModelError(f"{source} has an equality split; veilml converts '<', '<=', '>', '>=' splits")
    swap = inner & np.isin(cmp, (_GT, _GE))  # x > t goes left == x <= t goes right
    cleft, cright = np.asarray(get("cleft"), dtype=np.int64), np.asarray(get("cright"), dtype=np.int64)
    left = np.where(swap, cright, cleft)
    right = np.where(swap, cleft, cright)
    strict = np.isin(cmp, (_LT, _GE))
    default_left = np.asarray(get("default_left")).astype(bool) ^ swap
    threshold = np.asarray(get("threshold"), dtype=np.float64)
    if float32_inputs:
        threshold, strict = float32_tests(threshold, strict)
    value = _leaf_values(get, inner, c, outputs.n_outputs, source) * (outputs.scale * outputs.alpha)
    left, right = np.where(inner, left, -1), np.where(inner, right, -1)
    return make_tree(get("split_index"), threshold, left, right, value, strict, default_left)


def _leaf_values(get: Any, inner: np.ndarray, c: int, n_outputs: int, source: str) -> np.ndarray:
    """(nodes, outputs) leaf values: a vector per leaf (``c < 0``), or one value added to output ``c``."""
    value = np.zeros((inner.shape[0], n_outputs))
    if c >= 0:
        value[~inner, c] = np.asarray(get("leaf_value"), dtype=np.float64)[~inner]
        return value
    begin, end = np.asarray(get("leaf_vector_begin")), np.asarray(get("leaf_vector_end"))
    vector = np.asarray(get("leaf_vector"), dtype=np.float64)
    for node in np.flatnonzero(~inner):
        leaf = vector[begin[node] : end[node]]
        if leaf.shape != (n_outputs,):
            raise UnsupportedModelError(
                f"{source} has leaves with {leaf.shape[0]} values for {n_outputs} outputs; "
                "veilml converts leaves holding one value or one value per class"
            )
        value[node] = leaf
    return value


def _scaled(ensemble: TreeEnsemble, factor: float) -> TreeEnsemble:
    """The same ensemble with every raw score multiplied by ``factor``."""
    trees = tuple(replace(tree, value=tree.value * factor) for tree in ensemble.trees)
    return replace(ensemble, trees=trees, base_score=ensemble.bias * factor)


def _is_classifier(model: Any) -> bool:
    return hasattr(model, "classes_")  # fitted scikit-learn, XGBoost and LightGBM classifiers


# --------------------------------------------------------------------------------- scikit-learn


def convert_sklearn_ensemble(model: Any) -> TreeEnsemble:
    """A fitted RandomForest*, ExtraTrees*, GradientBoosting* or HistGradientBoosting* model."""
    name = type(model).__name__
    classifier = _is_classifier(model)
    if getattr(model, "n_outputs_", 1) != 1:
        raise UnsupportedModelError(
            f"this {name} has {model.n_outputs_} outputs (multi-output); veilml converts single-output "
            "models: fit one model per target"
        )
    hist = name.startswith("HistGradientBoosting")
    exponential = False
    if hist:
        categorical = getattr(model, "is_categorical_", None)
        if categorical is not None and np.any(categorical):
            raise UnsupportedModelError(
                f"this {name} has categorical features ({int(np.sum(categorical))}); veilml compares numbers "
                "only: encode categories as numbers and fit with categorical_features=None"
            )
        if model.loss in ("poisson", "gamma"):
            raise UnsupportedModelError(
                f"this {name} uses loss={model.loss!r}, whose prediction is exp(raw score); veilml's client "
                "applies only identity, sigmoid or softmax: use loss='squared_error', 'absolute_error' or 'quantile'"
            )
    elif name.startswith("GradientBoosting"):
        init = model.init_
        constant = isinstance(init, str) and init == "zero"
        if not constant and type(init).__name__ not in ("DummyClassifier", "DummyRegressor"):
            raise UnsupportedModelError(
                f"this {name} starts from a custom init estimator ({type(init).__name__}) whose prediction "
                "is not a constant; fit it with init=None or init='zero'"
            )
        if type(init).__name__ == "DummyClassifier" and init.strategy != "prior":
            raise UnsupportedModelError(
                f"this {name} has an init DummyClassifier(strategy={init.strategy!r}); fit it with init=None"
            )
        exponential = classifier and model.loss == "exponential"
    treelite = _import_treelite()
    try:
        tl_model = treelite.sklearn.import_model(model)
    except NotImplementedError as error:
        raise UnsupportedModelError(f"treelite cannot import this {name}: {error}") from error
    ensemble = from_treelite(
        tl_model,
        float32_inputs=not hist,  # HistGradientBoosting compares float64 inputs; the others cast to float32
        task="classification" if classifier else "regression",
        source=f"this {name}",
    )
    # loss='exponential': predict_proba is sigmoid(2 * decision_function); treelite omits the 2
    return _scaled(ensemble, 2.0) if exponential else ensemble


# --------------------------------------------------------------------------------- XGBoost


def convert_xgboost(model: Any) -> TreeEnsemble:
    """A fitted ``XGBClassifier`` / ``XGBRegressor`` (scikit-learn API) or an ``xgboost.Booster``.

    The scikit-learn API predicts with the best iteration after early stopping, and so does the
    converted ensemble; a ``Booster`` predicts with all its trees.
    """
    sklearn_api = hasattr(model, "get_booster")
    name = type(model).__name__
    if sklearn_api:
        booster = model.get_booster()
        missing = getattr(model, "missing", math.nan)
        if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
            raise UnsupportedModelError(
                f"this {name} treats the value missing={missing!r} as missing (it goes to each node's default "
                "child, not through the comparison); veilml compares every value: fit with missing=np.nan"
            )
        try:
            best = model.best_iteration
        except AttributeError:
            best = None
        if best is not None and best + 1 < booster.num_boosted_rounds():
            booster = booster[: best + 1]
        task = "classification" if _is_classifier(model) else "regression"
    else:
        booster, task = model, None
    try:
        rounds = booster.num_boosted_rounds()
    except Exception:  # xgboost.core.XGBoostError: a Booster() that was never trained has no features
        rounds = 0
    if rounds == 0:
        raise ValueError(f"this {name} has no trees (it is not fitted); call fit or xgboost.train first")
    learner = json.loads(booster.save_config())["learner"]
    kind = learner["gradient_booster"]["name"]
    objective = learner["objective"]["name"]
    source = f"this {name} (objective {objective!r})"
    if kind not in ("gbtree", "dart"):
        raise UnsupportedModelError(f"{source} uses booster={kind!r}; veilml converts trees: use booster='gbtree'")
    if learner.get("learner_train_param", {}).get("multi_strategy") == "multi_output_tree":
        raise UnsupportedModelError(
            f"{source} has multi-output trees (multi_strategy='multi_output_tree'); fit it with "
            "multi_strategy='one_output_per_tree'"
        )
    if any(t == "c" for t in (booster.feature_types or ())):
        raise UnsupportedModelError(
            f"{source} has categorical features (enable_categorical with categorical columns); veilml "
            "compares numbers only: encode categories as numbers and fit with enable_categorical=False"
        )
    treelite = _import_treelite()
    return from_treelite(treelite.frontend.from_xgboost(booster), float32_inputs=True, task=task, source=source)


# --------------------------------------------------------------------------------- LightGBM

_LGBM_ZERO = 1e-35  # LightGBM's kZeroThreshold: |x| <= this counts as zero


def _lightgbm_checks(dump: dict, source: str) -> None:
    """Refuse what treelite would convert wrongly or not at all: read LightGBM's own model dump."""
    for name, info in (dump.get("feature_infos") or {}).items():
        if isinstance(info, dict) and info.get("values"):
            raise UnsupportedModelError(
                f"{source} has a categorical feature ({name}); veilml compares numbers only: encode "
                "categories as numbers and fit without categorical_feature"
            )
    for tree in dump.get("tree_info", ()):
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" not in node:
                if "leaf_coeff" in node:
                    raise UnsupportedModelError(f"{source} has linear trees (linear_tree=True); fit with linear_tree=False")
                continue
            if node.get("decision_type") != "<=":
                raise UnsupportedModelError(
                    f"{source} has a categorical split; veilml compares numbers only: encode categories "
                    "as numbers and fit without categorical_feature"
                )
            if node.get("missing_type") == "Zero":
                t = float(node["threshold"])
                if bool(node.get("default_left")) != (0.0 <= t) or abs(t) <= _LGBM_ZERO:
                    raise UnsupportedModelError(
                        f"{source} was fitted with zero_as_missing=True: its splits send 0 to a default child "
                        "that the comparison with their threshold does not give; fit with zero_as_missing=False"
                    )
            stack.extend((node["left_child"], node["right_child"]))


def convert_lightgbm(model: Any) -> TreeEnsemble:
    """A fitted ``LGBMClassifier`` / ``LGBMRegressor`` or a ``lightgbm.Booster``.

    Both predict with the best iteration when early stopping recorded one (LightGBM's default).
    """
    name = type(model).__name__
    sklearn_api = hasattr(model, "booster_")
    booster = model.booster_ if sklearn_api else model
    if booster.num_trees() == 0:
        raise ValueError(f"this {name} has no trees (it is not fitted); call fit or lightgbm.train first")
    dump = booster.dump_model()
    source = f"this {name} (objective {dump.get('objective', '?').split(' ')[0]!r})"
    _lightgbm_checks(dump, source)
    treelite = _import_treelite()
    return from_treelite(
        treelite.frontend.from_lightgbm(booster),
        float32_inputs=False,
        task=("classification" if _is_classifier(model) else "regression") if sklearn_api else None,
        source=source,
    )
