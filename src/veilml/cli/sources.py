"""The model files ``veilml compile`` reads, by suffix, and ``--n-bits auto`` for a model trained already.

Every format goes through the library's own converters (treelite for XGBoost and LightGBM, the ONNX
reader, scikit-learn's trees read directly); nothing here is unpickled: scikit-learn models come as
``.skops`` files, whose loader builds only the types it is told to trust (:data:`SKOPS_TRUSTED`).

``--n-bits auto`` keeps the model as it was trained: it runs the search of ``n_bits="auto"``
(:mod:`veilml.models.trees.auto_bits`), judging each precision by how closely its clear predictions
(``fhe="disable"``) agree with the model's own float predictions on the ``--data`` rows (the criterion of
``train_on="float"``: the share of equal labels, or ``1 - MSE / variance``). No labels are needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veilml.cli.common import CommandError, one_line

__all__ = ["FORMATS", "SKOPS_TRUSTED", "ModelSource", "check_model_file", "choose_bits", "open_model"]

#: suffix -> what such a file is, in the order the help lists them
FORMATS = {
    ".onnx": "ONNX-ML tree ensemble (skl2onnx, onnxmltools)",
    ".json": "XGBoost model (save_model)",
    ".ubj": "XGBoost model in UBJSON (save_model)",
    ".txt": "LightGBM text model (Booster.save_model)",
    ".skops": "scikit-learn tree model saved with skops.io.dump",
}

#: the types a scikit-learn tree model's .skops file holds beyond those skops trusts by default
SKOPS_TRUSTED = frozenset({"sklearn.tree._tree.Tree", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"})


def check_model_file(path: str) -> str:
    """The suffix of ``path``, once it is a file of a supported format (checked before any library loads)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = "; ".join(f"{s}: {what}" for s, what in FORMATS.items())
        raise CommandError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; veilml compile reads {known}")
    if not Path(path).is_file():
        raise CommandError(f"{path} does not exist (or is not a file); give the path of a saved model")
    return suffix


def _library(module: str, suffix: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = "onnx" if suffix == ".onnx" else "trees"
        raise CommandError(f"reading {suffix} files needs {module} ({error}); pip install 'veilml[{extra}]'") from None


class ModelSource:
    """A model file read: its float ensemble (the reference), column names, and estimators at given precisions."""

    def __init__(self, path: str, ensemble: Any, build: Any, names: Any = None) -> None:
        self.path, self.ensemble, self._build = path, ensemble, build
        self.feature_names = None if names is None else tuple(str(name) for name in names)

    def estimator(self, X: Any, n_bits: int, leaf_bits: int | None = None) -> Any:
        """The encrypted estimator of this model, its input grid calibrated on ``X``."""
        return self._build(X, n_bits, leaf_bits)

    def reference(self, X: Any) -> Any:
        """The model's own float output on ``X``: probabilities (classifiers) or values, (n_rows, n_outputs)."""
        return self.ensemble.transform(self.ensemble.predict(X))


def _from_onnx(path: str) -> ModelSource:
    onnx = _library("onnx", ".onnx")
    import veilml
    from veilml.models.trees.convert.onnx import from_onnx as read_onnx

    try:
        graph = onnx.load_from_string(Path(path).read_bytes())
    except Exception as error:  # google.protobuf's DecodeError: not an ONNX file
        raise CommandError(f"cannot read {path} as an ONNX model: {one_line(error)}") from None

    def build(X: Any, n_bits: int, leaf_bits: int | None) -> Any:
        return veilml.from_onnx(graph, X=X, n_bits=n_bits, leaf_bits=leaf_bits)

    return ModelSource(path, read_onnx(graph), build)


def _from_xgboost(path: str) -> ModelSource:
    xgboost = _library("xgboost", Path(path).suffix)
    import veilml
    from veilml.models.trees.convert.supported import to_ensemble

    try:
        booster = xgboost.Booster(model_file=path)
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        classifier = objective.startswith(("binary:", "multi:"))
        model = (xgboost.XGBClassifier if classifier else xgboost.XGBRegressor)()
        model.load_model(path)  # the scikit-learn API keeps the best iteration of early stopping
    except (xgboost.core.XGBoostError, ValueError, KeyError) as error:
        raise CommandError(f"cannot read {path} as an XGBoost model: {one_line(error)}; save it with save_model") from None
    family = veilml.XGBClassifier if classifier else veilml.XGBRegressor

    def build(X: Any, n_bits: int, leaf_bits: int | None) -> Any:
        return family.from_fitted(model, X, n_bits=n_bits, leaf_bits=leaf_bits)

    return ModelSource(path, to_ensemble(model), build, getattr(model, "feature_names_in_", None))


def _from_lightgbm(path: str) -> ModelSource:
    lightgbm = _library("lightgbm", ".txt")
    import numpy as np

    from veilml.models.trees.convert.imported import ImportedTreeClassifier, ImportedTreeRegressor
    from veilml.models.trees.convert.supported import to_ensemble

    with open(path, "rb") as file:
        first = file.readline().strip()
    if first != b"tree":  # LightGBM's text models open with this line; checked here before its loader logs a fatal error
        raise CommandError(
            f"{path} is not a LightGBM text model (its first line is not 'tree'); save it with booster_.save_model"
        )
    try:
        booster = lightgbm.Booster(model_file=path)
    except (lightgbm.basic.LightGBMError, ValueError) as error:
        raise CommandError(
            f"cannot read {path} as a LightGBM text model: {one_line(error)}; save it with booster_.save_model"
        ) from None
    ensemble = to_ensemble(booster)
    names = booster.feature_name()
    if names == [f"Column_{i}" for i in range(len(names))]:  # LightGBM's names for a model fitted on an array
        names = None

    def build(X: Any, n_bits: int, leaf_bits: int | None) -> Any:
        # as veilml.from_onnx does for an ONNX graph: an imported model, predicting and compiling, never refit
        cls = ImportedTreeClassifier if ensemble.task == "classification" else ImportedTreeRegressor
        estimator = cls(n_bits=n_bits, leaf_bits=leaf_bits)
        estimator._validate_params()
        if names is not None:
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        estimator._set_fitted_float(booster, ensemble, X, n_bits, f"the LightGBM model {path}")
        return estimator

    return ModelSource(path, ensemble, build, names)


def _from_skops(path: str) -> ModelSource:
    skops_io = _library("skops.io", ".skops")
    import veilml
    from veilml.models.trees.convert.supported import to_ensemble
    from veilml.models.trees.families import FAMILIES

    sklearn_families = {family.name: name for name, family in FAMILIES.items() if family.module.startswith("sklearn")}
    try:
        untrusted = set(skops_io.get_untrusted_types(file=path))
        if untrusted - SKOPS_TRUSTED:
            raise CommandError(
                f"{path} holds types that veilml does not load: {', '.join(sorted(untrusted - SKOPS_TRUSTED))}; a .skops "
                f"file for veilml compile holds one scikit-learn tree model ({', '.join(sklearn_families)})"
            )
        model = skops_io.load(path, trusted=sorted(untrusted))
    except CommandError:
        raise
    except Exception as error:  # skops raises what its loaders meet: zipfile, JSON, type and attribute errors
        raise CommandError(f"cannot read {path} as a skops file: {one_line(error)}; save the model with skops.io.dump") from None
    name = sklearn_families.get(type(model).__name__)
    if name is None or type(model).__module__.split(".")[0] != "sklearn":
        raise CommandError(
            f"{path} holds a {type(model).__module__}.{type(model).__name__}; veilml compile takes one of "
            f"{', '.join(sklearn_families)} (not a pipeline: save the fitted tree model itself)"
        )
    family = getattr(veilml, name)

    def build(X: Any, n_bits: int, leaf_bits: int | None) -> Any:
        return family.from_fitted(model, X, n_bits=n_bits, leaf_bits=leaf_bits)

    return ModelSource(path, to_ensemble(model), build, getattr(model, "feature_names_in_", None))


_READERS = {".onnx": _from_onnx, ".json": _from_xgboost, ".ubj": _from_xgboost, ".txt": _from_lightgbm, ".skops": _from_skops}


def open_model(path: str) -> ModelSource:
    """Read the model file ``path`` (a supported suffix: :func:`check_model_file`)."""
    try:
        return _READERS[check_model_file(path)](path)
    except ValueError as error:  # UnsupportedModelError, NotFittedError: the converters' own words
        raise CommandError(f"cannot compile {path}: {one_line(error)}") from None


def choose_bits(source: ModelSource, X: Any) -> tuple[int, int | None, str]:
    """(n_bits, leaf_bits, what was chosen): ``n_bits="auto"``'s search and choice (:mod:`~veilml.models.trees.auto_bits`:
    the cheapest circuit among the candidates within ``AGREEMENT_TOLERANCE`` of the best), each candidate judged by
    its agreement with the model's own float predictions on ``X``: the model is never refit. ``leaf_bits`` None: the
    estimator's default at ``n_bits``."""
    import numpy as np

    from veilml.models.trees.auto_bits import AGREEMENT_TOLERANCE, _choice, _search, circuit_cost
    from veilml.quantization import RangeWarningScope

    reference = source.reference(X)
    classifier = source.ensemble.task == "classification"
    spread = max(float(np.var(reference)), 1e-300)

    def evaluate(n_bits: int, leaf_bits: int | None) -> dict[str, Any]:
        estimator = source.estimator(X, n_bits, leaf_bits)
        if classifier:  # the share of rows given the model's label
            agreement = float(np.mean(estimator.predict_proba(X).argmax(axis=1) == reference.argmax(axis=1)))
        else:  # 1 - MSE to the model's values / their variance
            ours = np.asarray(estimator.predict(X), dtype=np.float64).reshape(reference.shape)
            agreement = float(1.0 - np.mean((ours - reference) ** 2) / spread)
        result = {"n_bits": n_bits, "leaf_bits": leaf_bits, "leaf_bits_": int(estimator.leaf_bits_)}
        return {**result, "metric": agreement, "cost": circuit_cost(estimator)}

    with RangeWarningScope(silent=True):
        candidates, _ = _search(evaluate, AGREEMENT_TOLERANCE, progress=False)
    chosen = _choice(candidates, AGREEMENT_TOLERANCE)
    measure = "of the labels" if classifier else "(1 - MSE / variance)"
    found = (
        f"{chosen['n_bits']} input bits, {chosen['leaf_bits_']} leaf bits: of {len(candidates)} precisions tried, the "
        f"cheapest circuit whose clear predictions agree with the model's own on the {len(X)} --data rows as well as "
        f"the best's, within {AGREEMENT_TOLERANCE:.1%}: {chosen['metric']:.2%} {measure}"
    )
    return chosen["n_bits"], chosen["leaf_bits"], found
