#!/usr/bin/env python3
"""Concrete-ML side of the veilml vs Concrete-ML benchmark.

Runs inside the Concrete-ML virtualenv (see ``concrete_ml_env.sh``); it must
NOT import veilml. It trains a Concrete-ML tree model on sklearn's breast
cancer data set, compiles it to FHE and prints ONE JSON object on stdout with
accuracy (float sklearn / fhe="disable" / fhe="simulate"), circuit statistics
(PBS count, complexity, max bit width, key sizes), compile and keygen times,
the serialized evaluation-key size and the median per-row latency of
``predict(..., fhe="execute")``. Every log line goes to stderr.

Usage::

    benchmarks/.venv-concrete-ml/bin/python benchmarks/concrete_ml_side.py \
        --model decision_tree --rows 3 > out.json

Models are registered in ``MODELS``: ``decision_tree`` (depth 5), ``random_forest``
and ``xgboost`` (20 trees of depth 4), all at 6 bits with ``random_state=0``, the
configurations of ``benchmarks/trees.py`` (which also passes them explicitly).
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    shim = force_legacy_onnx_export()
    if shim:
        log("torch>=2.9: torch.onnx.export now defaults to dynamo=False (legacy exporter)")

    spec = MODELS[args.model]
    hp = dict(spec.defaults)
    for key in ("max_depth", "n_bits", "n_estimators", "random_state"):
        val = getattr(args, key)
        if val is not None and key in hp:
            hp[key] = val

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    log(f"data: train={X_train.shape} test={X_test.shape}; model={args.model} hp={hp}")

    result: dict[str, Any] = {
        "side": "concrete-ml",
        "model": args.model,
        "hyperparameters": hp,
        "dataset": {
            "name": "sklearn.datasets.load_breast_cancer",
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
    result["float_accuracy"] = float(np.mean(float_model.predict(X_test) == y_test))

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

    # Accuracy in the clear-quantized and simulated modes (all test rows).
    y_disable = np.asarray(model.predict(X_test, fhe="disable"))
    result["accuracy_disable"] = float(np.mean(y_disable == y_test))
    t0 = time.perf_counter()
    y_sim = np.asarray(model.predict(X_test, fhe="simulate"))
    result["simulate_time_s"] = time.perf_counter() - t0
    result["accuracy_simulate"] = float(np.mean(y_sim == y_test))
    result["simulate_agrees_with_disable"] = float(np.mean(y_sim == y_disable))
    log(
        f"acc float={result['float_accuracy']:.4f} disable={result['accuracy_disable']:.4f}"
        f" simulate={result['accuracy_simulate']:.4f}"
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
    if n_rows > 0:
        latencies, preds = [], []
        for i in range(n_rows):
            t0 = time.perf_counter()
            pred = np.asarray(model.predict(X_test[i : i + 1], fhe="execute"))
            latencies.append(time.perf_counter() - t0)
            preds.append(int(pred.reshape(-1)[0]))
            log(f"execute row {i}: {latencies[-1]:.3f}s pred={preds[-1]}")
        result["execute_latencies_s"] = latencies
        result["execute_latency_median_s"] = float(pystats.median(latencies))
        result["execute_predictions"] = preds
        result["execute_agrees_with_disable"] = bool(np.array_equal(np.asarray(preds), y_disable[:n_rows]))
        result["execute_correct"] = int(np.sum(np.asarray(preds) == y_test[:n_rows]))
    return _jsonable(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="decision_tree")
    parser.add_argument("--rows", type=int, default=3, help="test rows run with fhe='execute' (0: skip)")
    parser.add_argument("--max-depth", dest="max_depth", type=int, default=None)
    parser.add_argument("--n-bits", dest="n_bits", type=int, default=None)
    parser.add_argument("--n-estimators", dest="n_estimators", type=int, default=None)
    parser.add_argument("--random-state", dest="random_state", type=int, default=None)
    parser.add_argument("--skip-keygen", action="store_true", help="skip keygen (smoke checks)")
    args = parser.parse_args(argv)
    if args.rows > 0 and args.skip_keygen:
        parser.error("--rows > 0 needs keys; drop --skip-keygen or use --rows 0")

    t0 = time.perf_counter()
    result = run(args)
    result["total_time_s"] = time.perf_counter() - t0
    _JSON_OUT.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _JSON_OUT.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
