#!/usr/bin/env python3
"""Concrete-ML side of the veilml vs Concrete-ML benchmark.

Runs inside the Concrete-ML virtualenv (see ``concrete_ml_env.sh``); it must
NOT import veilml. It trains a Concrete-ML tree model on one data set (25 %
test split, seed 0), compiles it to FHE and prints ONE JSON object on stdout with
the metric (accuracy for classifiers, R² for regressors: float model /
fhe="disable" / fhe="simulate" on every test row / fhe="execute" on the timed
rows), circuit statistics (PBS count, complexity, max bit width, key sizes),
compile and keygen times, the serialized evaluation-key size, the bytes of one
serialized encrypted input and output, the median per-row latency of
``predict_proba(row, fhe="execute")`` (``predict`` for regressors), the
throughput of one ``fhe="execute"`` call on a batch of rows, and whether
``execute`` returned exactly what ``simulate`` returns on every executed row.
Every log line goes to stderr.

Usage::

    benchmarks/.venv-concrete-ml/bin/python benchmarks/concrete_ml_side.py \
        --model decision_tree --dataset breast_cancer --rows 5 --batch 8 > out.json

Models are registered in ``MODELS``: ``decision_tree`` and ``decision_tree_regressor``
(depth 5), ``random_forest`` and ``xgboost`` (20 trees of depth 4), all at 6 bits with
``random_state=0`` by default; ``benchmarks/trees.py`` passes its hyper-parameters
explicitly. Data sets are registered in ``DATASETS`` (the same calls as
``benchmarks/tree_families.py``, repeated here because this side must not import
anything of veilml's).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics as pystats
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# --- keep stdout clean --------------------------------------------------------
# Concrete's native code and some libraries print to fd 1. Keep a private copy
# of the real stdout for the final JSON and point fd 1 at stderr for the rest.
_JSON_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


def log(msg: str) -> None:
    print(f"[concrete_ml_side] {msg}", file=sys.stderr, flush=True)


# --- torch >= 2.9 compatibility shim -----------------------------------------
def force_legacy_onnx_export() -> bool:
    """Make torch.onnx.export default to the TorchScript exporter (dynamo=False).

    Concrete-ML 1.9.0 pins torch 2.3.1; we run it on torch 2.13 (see
    concrete_ml_env.sh). Since torch 2.9 ``torch.onnx.export`` defaults to
    ``dynamo=True``, which needs ``onnxscript`` and emits a different graph than
    the one Concrete-ML / hummingbird-ml were written against. The legacy
    exporter is still shipped (deprecated), so restore it as the default for
    callers that don't choose (hummingbird-ml's tree -> ONNX conversion, and
    concrete.ml.onnx.convert). Returns True if the shim was installed.
    """
    import torch
    import torch.onnx

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 9) or getattr(torch.onnx.export, "_veil_legacy", False):
        return False
    original = torch.onnx.export

    @functools.wraps(original)
    def export(*args: Any, **kwargs: Any):
        kwargs.setdefault("dynamo", False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return original(*args, **kwargs)

    export._veil_legacy = True  # type: ignore[attr-defined]
    torch.onnx.export = export
    return True


# --- model registry -----------------------------------------------------------
@dataclass
class ModelSpec:
    """How to build the Concrete-ML model and its float sklearn/xgboost twin."""

    defaults: dict[str, Any]
    make_fhe: Callable[[dict[str, Any]], Any]
    make_float: Callable[[dict[str, Any]], Any]
    notes: dict[str, Any] = field(default_factory=dict)


def _dt_fhe(hp):
    from concrete.ml.sklearn import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=hp["max_depth"], n_bits=hp["n_bits"], random_state=hp["random_state"])


def _dt_float(hp):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=hp["max_depth"], random_state=hp["random_state"])


def _rf_fhe(hp):
    from concrete.ml.sklearn import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=hp["n_estimators"],
        max_depth=hp["max_depth"],
        n_bits=hp["n_bits"],
        random_state=hp["random_state"],
    )


def _rf_float(hp):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=hp["n_estimators"],
        max_depth=hp["max_depth"],
        random_state=hp["random_state"],
    )


def _dtr_fhe(hp):
    from concrete.ml.sklearn import DecisionTreeRegressor

    return DecisionTreeRegressor(max_depth=hp["max_depth"], n_bits=hp["n_bits"], random_state=hp["random_state"])


def _dtr_float(hp):
    from sklearn.tree import DecisionTreeRegressor

    return DecisionTreeRegressor(max_depth=hp["max_depth"], random_state=hp["random_state"])


def _xgb_fhe(hp):
    from concrete.ml.sklearn import XGBClassifier

    return XGBClassifier(
        n_estimators=hp["n_estimators"],
        max_depth=hp["max_depth"],
        n_bits=hp["n_bits"],
        random_state=hp["random_state"],
    )


def _xgb_float(hp):
    import xgboost

    return xgboost.XGBClassifier(
        n_estimators=hp["n_estimators"],
        max_depth=hp["max_depth"],
        random_state=hp["random_state"],
    )


MODELS: dict[str, ModelSpec] = {
    "decision_tree": ModelSpec(
        defaults={"max_depth": 5, "n_bits": 6, "random_state": 0},
        make_fhe=_dt_fhe,
        make_float=_dt_float,
    ),
    "random_forest": ModelSpec(
        defaults={"n_estimators": 20, "max_depth": 4, "n_bits": 6, "random_state": 0},
        make_fhe=_rf_fhe,
        make_float=_rf_float,
    ),
    "xgboost": ModelSpec(
        defaults={"n_estimators": 20, "max_depth": 4, "n_bits": 6, "random_state": 0},
        make_fhe=_xgb_fhe,
        make_float=_xgb_float,
    ),
    "decision_tree_regressor": ModelSpec(
        defaults={"max_depth": 5, "n_bits": 6, "random_state": 0},
        make_fhe=_dtr_fhe,
        make_float=_dtr_float,
        notes={"task": "regression"},
    ),
}


# --- data sets (the calls of benchmarks/tree_families.py) ----------------------
def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def _classification_60():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=600, n_features=60, n_informative=12, n_redundant=8, random_state=0)


def _diabetes():
    from sklearn.datasets import load_diabetes

    return load_diabetes(return_X_y=True)


def _wine():
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


def _digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


#: data set name -> (the call that makes it, loader)
DATASETS: dict[str, tuple[str, Callable[[], Any]]] = {
    "breast_cancer": ("sklearn.datasets.load_breast_cancer()", _breast_cancer),
    "classification_60": (
        "sklearn.datasets.make_classification(n_samples=600, n_features=60, n_informative=12, n_redundant=8, random_state=0)",
        _classification_60,
    ),
    "diabetes": ("sklearn.datasets.load_diabetes()", _diabetes),
    "wine": ("sklearn.datasets.load_wine()", _wine),
    "digits": ("sklearn.datasets.load_digits()", _digits),
}


# --- helpers ------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "concrete-ml",
        "concrete-python",
        "torch",
        "scikit-learn",
        "numpy",
        "hummingbird-ml",
        "onnx",
        "xgboost",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(v: Any) -> Any:
    """Convert numpy scalars / nested containers to plain JSON types."""
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _metric(task: str, y_true: Any, y_pred: Any) -> float:
    import numpy as np

    if task == "regression":
        from sklearn.metrics import r2_score

        return float(r2_score(y_true, y_pred))
    return float(np.mean(np.asarray(y_pred) == np.asarray(y_true)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    shim = force_legacy_onnx_export()
    if shim:
        log("torch>=2.9: torch.onnx.export now defaults to dynamo=False (legacy exporter)")

    spec = MODELS[args.model]
    task = spec.notes.get("task", "classification")
    hp = dict(spec.defaults)
    for key in ("max_depth", "n_bits", "n_estimators", "random_state"):
        val = getattr(args, key)
        if val is not None and key in hp:
            hp[key] = val

    dataset_call, load = DATASETS[args.dataset]
    X, y = load()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    log(f"data: {args.dataset} train={X_train.shape} test={X_test.shape}; model={args.model} hp={hp}")

    result: dict[str, Any] = {
        "side": "concrete-ml",
        "model": args.model,
        "task": task,
        "metric": "r2" if task == "regression" else "accuracy",
        "hyperparameters": hp,
        "dataset": {
            "name": args.dataset,
            "call": dataset_call,
            "split": "train_test_split(test_size=0.25, random_state=0)",
            "n_train": int(X_train.shape[0]),
            "n_test": int(X_test.shape[0]),
            "n_features": int(X_train.shape[1]),
        },
        "versions": _versions(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "torch_onnx_export_forced_legacy": shim,
    }

    # Float reference with the same hyper-parameters.
    float_model = spec.make_float(hp)
    float_model.fit(X_train, y_train)
    result["float_metric"] = _metric(task, y_test, float_model.predict(X_test))

    # Concrete-ML model.
    model = spec.make_fhe(hp)
    t0 = time.perf_counter()
    model.fit(X_train, y_train)
    result["fit_time_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.compile(X_train)
    result["compile_time_s"] = time.perf_counter() - t0
    circuit = model.fhe_circuit
    log(f"compiled in {result['compile_time_s']:.2f}s")

    stats = circuit.statistics
    result["pbs_count"] = int(stats["programmable_bootstrap_count"])
    result["complexity"] = float(stats["complexity"])
    result["max_bit_width"] = int(circuit.graph.maximum_integer_bit_width())
    # What the client decrypts per row: for ensembles, one value per tree and class unless the
    # sum over trees is done inside the circuit.
    result["circuit_output_shapes"] = [list(node.output.shape) for node in circuit.graph.ordered_outputs()]
    result["p_error"] = float(stats.get("p_error", float("nan")))
    result["global_p_error"] = float(stats.get("global_p_error", float("nan")))
    result["key_switch_count"] = int(stats.get("key_switch_count", 0))
    sizes = {k: int(v) for k, v in stats.items() if k.startswith("size_of_")}
    result["statistics_sizes_bytes"] = sizes
    if "size_of_bootstrap_keys" in sizes and "size_of_keyswitch_keys" in sizes:
        # What the optimizer reports for bsk + ksk (uncompressed layout).
        result["statistics_evaluation_key_size_bytes"] = sizes["size_of_bootstrap_keys"] + sizes["size_of_keyswitch_keys"]
    cfg = getattr(circuit, "configuration", None)
    result["compress_evaluation_keys"] = getattr(cfg, "compress_evaluation_keys", None)
    result["compress_input_ciphertexts"] = getattr(cfg, "compress_input_ciphertexts", None)

    # What is timed and compared between modes: class probabilities for classifiers (predict
    # is their argmax), values for regressors; both are the dequantized circuit outputs.
    def outputs(rows: Any, fhe: str) -> Any:
        method = model.predict if task == "regression" else model.predict_proba
        return np.asarray(method(rows, fhe=fhe))

    def labels(out: Any) -> Any:
        return out if task == "regression" else np.asarray(model.classes_)[np.argmax(out, axis=1)]

    # Metric in the clear-quantized and simulated modes (all test rows).
    y_disable = np.asarray(model.predict(X_test, fhe="disable"))
    result["metric_disable"] = _metric(task, y_test, y_disable)
    t0 = time.perf_counter()
    simulated = outputs(X_test, "simulate")
    result["simulate_time_s"] = time.perf_counter() - t0
    y_sim = labels(simulated)
    result["metric_simulate"] = _metric(task, y_test, y_sim)
    result["simulate_agrees_with_disable"] = float(np.mean(np.isclose(y_sim, y_disable, rtol=0, atol=1e-9)))
    if task == "classification":  # the keys of the first version of this file
        result["float_accuracy"] = result["float_metric"]
        result["accuracy_disable"] = result["metric_disable"]
        result["accuracy_simulate"] = result["metric_simulate"]
    log(
        f"{result['metric']} float={result['float_metric']:.4f} disable={result['metric_disable']:.4f}"
        f" simulate={result['metric_simulate']:.4f}"
    )

    # Key generation + evaluation key size.
    if not args.skip_keygen:
        t0 = time.perf_counter()
        circuit.keygen(force=True)
        result["keygen_time_s"] = time.perf_counter() - t0
        ek = circuit.client.evaluation_keys
        result["evaluation_key_serialized_bytes"] = len(ek.serialize())
        log(f"keygen {result['keygen_time_s']:.2f}s, serialized eval keys {result['evaluation_key_serialized_bytes']} B")

    # Encrypted execution, one row per call, timed.
    n_rows = min(args.rows, X_test.shape[0])
    result["execute_rows"] = n_rows
    executed, agree = [], []
    if n_rows > 0:
        # Bytes on the wire for one row: the serialized encrypted input and output, as
        # predict(fhe="execute") makes them (quantize_input, then the circuit's encrypt and run).
        encrypted = circuit.encrypt(model.quantize_input(X_test[:1]))
        ran = circuit.run(encrypted)
        result["bytes_up_per_row"] = len(encrypted.serialize())
        result["bytes_down_per_row"] = len(ran.serialize())
        log(f"bytes per row: up {result['bytes_up_per_row']}, down {result['bytes_down_per_row']}")
        latencies = []
        for i in range(n_rows):
            t0 = time.perf_counter()
            out = outputs(X_test[i : i + 1], "execute")
            latencies.append(time.perf_counter() - t0)
            executed.append(out[0])
            agree.append(bool(np.array_equal(out[0], simulated[i])))
            log(f"execute row {i}: {latencies[-1]:.3f}s, equals simulate: {agree[-1]}")
        preds = labels(np.stack(executed))
        result["execute_latencies_s"] = latencies
        result["execute_latency_median_s"] = float(pystats.median(latencies))
        result["execute_predictions"] = preds.tolist()
        result["execute_agrees_with_disable"] = bool(np.allclose(preds, y_disable[:n_rows], rtol=0, atol=1e-9))
        result["execute_correct"] = int(np.sum(preds == y_test[:n_rows])) if task == "classification" else None

    # One execute call on a batch of rows: encrypt, run and decrypt each (Concrete-ML's predict
    # loops over the rows); the rows are capped so that the batch takes about --batch-budget-s.
    n_batch = min(args.batch, X_test.shape[0])
    if n_batch > 0 and n_rows > 0 and args.batch_budget_s:
        n_batch = min(n_batch, max(2, int(args.batch_budget_s // result["execute_latency_median_s"])))
    result["batch_rows"] = n_batch
    if n_batch > 0:
        t0 = time.perf_counter()
        out = outputs(X_test[:n_batch], "execute")
        result["batch_time_s"] = time.perf_counter() - t0
        result["batch_throughput_rows_per_s"] = n_batch / result["batch_time_s"]
        executed.extend(out)
        agree.extend(bool(np.array_equal(a, b)) for a, b in zip(out, simulated[:n_batch]))
        log(f"batch of {n_batch} rows: {result['batch_time_s']:.2f}s")
    if executed:
        # The metric on the executed rows (timed rows, then the batch's).
        rows_y = np.concatenate([y_test[:n_rows], y_test[:n_batch]])
        result["metric_execute"] = _metric(task, rows_y, labels(np.stack(executed)))
        result["metric_execute_rows"] = len(executed)
        result["execute_equals_simulate_rows"] = int(sum(agree))
        result["execute_equals_simulate"] = bool(all(agree))
    return _jsonable(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="decision_tree")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="breast_cancer")
    parser.add_argument("--rows", type=int, default=5, help="test rows run one by one with fhe='execute' (0: skip)")
    parser.add_argument("--batch", type=int, default=8, help="rows of the timed batch call (0: skip)")
    parser.add_argument(
        "--batch-budget-s",
        dest="batch_budget_s",
        type=float,
        default=None,
        help="fewer batch rows (at least 2) when the median row latency says the batch would take longer",
    )
    parser.add_argument("--max-depth", dest="max_depth", type=int, default=None)
    parser.add_argument("--n-bits", dest="n_bits", type=int, default=None)
    parser.add_argument("--n-estimators", dest="n_estimators", type=int, default=None)
    parser.add_argument("--random-state", dest="random_state", type=int, default=None)
    parser.add_argument("--skip-keygen", action="store_true", help="skip keygen (smoke checks)")
    args = parser.parse_args(argv)
    if args.rows > 0 and args.skip_keygen:
        parser.error("--rows > 0 needs keys; drop --skip-keygen or use --rows 0")
    if args.skip_keygen:
        args.batch = 0  # no keys, no batch

    t0 = time.perf_counter()
    result = run(args)
    result["total_time_s"] = time.perf_counter() - t0
    _JSON_OUT.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _JSON_OUT.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
