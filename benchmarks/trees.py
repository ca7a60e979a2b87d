"""veilml against Concrete-ML 1.9 on the same tree models, side by side in one run.

    .venv/bin/python benchmarks/trees.py [--rows 5] [--batch 8] [--cases dt_cancer rf_cancer ...]
                                         [--skip-concrete-ml]

Cases (``CASES``): a decision tree of depth 5, a random forest of 20 trees of depth 4 and an
XGBoost classifier of 20 trees of depth 4 on breast cancer at 6 bits; the same three on
``make_classification(n_samples=600, n_features=60, n_informative=12, n_redundant=8,
random_state=0)`` (``classification_60`` of ``benchmarks/tree_families.py``); the decision tree on
breast cancer at 8 bits; a decision-tree regressor of depth 5 on ``load_diabetes`` at 6 bits (R²); and the
multi-class cases: the tree, the forest and XGBoost (20 rounds, one tree per class each) on ``load_wine`` (3
classes) and ``load_digits`` (10 classes, 64 features) at 6 bits.
25 % test split with seed 0, ``random_state=0`` everywhere, every other hyper-parameter at its
library's default, the same data, hyper-parameters and n_bits on both sides.

Sides, one after the other (never concurrently): Concrete-ML 1.9, in its own virtual environment
(``benchmarks/concrete_ml_env.sh`` builds it) through ``benchmarks/concrete_ml_side.py``, which
prints one JSON object; veilml in its default configuration (``encoding="thermometer"``); veilml
with ``encoding="auto"`` (a cost model picks the comparison strategy); veilml (default encoding)
compiled at Concrete-ML's global p_error. For each: PBS, complexity, keygen time, evaluation-key
size, bytes per row up and down, the median latency per row over ``--rows`` rows (one row per
call: encrypt, run, decrypt), the throughput of a batch of ``--batch`` rows run end to end
(encrypt all, run all, decrypt all; Concrete-ML's batch is cut to fit ``--cml-batch-budget-s`` where
one of its rows takes long), the metric (accuracy, or R²) float / quantized (``disable``) / FHE
(``simulate`` on every test row, ``execute`` on the executed rows), and whether ``execute``
returned exactly ``simulate``'s output on every executed row. veilml's ``fhe_report()`` (its
estimate of bytes and of the client / server split of a row's time) is recorded next to what was
measured.

Writes ``benchmarks/results/trees.json`` and ``benchmarks/results/trees.md`` (``--output`` names others) (after every case)
and, per case, ``benchmarks/results/concrete_ml_<case>.json`` (Concrete-ML's raw output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

#: model kind (concrete_ml_side.py --model) -> (veilml estimator, hyper-parameters, task)
MODELS: dict[str, tuple[str, dict, str]] = {
    "decision_tree": ("DecisionTreeClassifier", {"max_depth": 5, "random_state": 0}, "classification"),
    "random_forest": (
        "RandomForestClassifier",
        {"n_estimators": 20, "max_depth": 4, "random_state": 0},
        "classification",
    ),
    "xgboost": ("XGBClassifier", {"n_estimators": 20, "max_depth": 4, "random_state": 0}, "classification"),
    "decision_tree_regressor": ("DecisionTreeRegressor", {"max_depth": 5, "random_state": 0}, "regression"),
}


@dataclass(frozen=True)
class Case:
    """One benchmarked model: its kind (a key of ``MODELS``), data set, bits and a title."""

    title: str
    model: str
    dataset: str  # a data set of benchmarks/tree_families.py DATASETS[task]
    n_bits: int

    @property
    def task(self) -> str:
        return MODELS[self.model][2]

    @property
    def metric(self) -> str:
        return "r2" if self.task == "regression" else "accuracy"


#: in the order they run: the costliest last (a run cut short keeps the others)
CASES: dict[str, Case] = {
    "dt_cancer": Case("decision tree, depth 5, breast cancer, 6 bits", "decision_tree", "breast_cancer", 6),
    "rf_cancer": Case("random forest, 20 trees × depth 4, breast cancer, 6 bits", "random_forest", "breast_cancer", 6),
    "xgb_cancer": Case("XGBoost, 20 trees × depth 4, breast cancer, 6 bits", "xgboost", "breast_cancer", 6),
    "dt_wide": Case("decision tree, depth 5, 60 features, 6 bits", "decision_tree", "classification_60", 6),
    "dt_cancer_8bit": Case("decision tree, depth 5, breast cancer, 8 bits", "decision_tree", "breast_cancer", 8),
    "dtr_diabetes": Case("decision-tree regressor, depth 5, diabetes, 6 bits (R²)", "decision_tree_regressor", "diabetes", 6),
    "xgb_wide": Case("XGBoost, 20 trees × depth 4, 60 features, 6 bits", "xgboost", "classification_60", 6),
    "rf_wide": Case("random forest, 20 trees × depth 4, 60 features, 6 bits", "random_forest", "classification_60", 6),
    "dt_wine": Case("decision tree, depth 5, wine (3 classes), 6 bits", "decision_tree", "wine", 6),
    "rf_wine": Case("random forest, 20 trees × depth 4, wine (3 classes), 6 bits", "random_forest", "wine", 6),
    "xgb_wine": Case("XGBoost, 20 rounds × depth 4, wine (3 classes), 6 bits", "xgboost", "wine", 6),
    "dt_digits": Case("decision tree, depth 5, digits (10 classes), 6 bits", "decision_tree", "digits", 6),
    "rf_digits": Case("random forest, 20 trees × depth 4, digits (10 classes), 6 bits", "random_forest", "digits", 6),
    "xgb_digits": Case("XGBoost, 20 rounds × depth 4, digits (10 classes), 6 bits", "xgboost", "digits", 6),
}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


#: data sets of this benchmark beyond benchmarks/tree_families.py's DATASETS
EXTRA_DATASETS = {"digits": _digits}


def load_case_data(case: Case) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split
    from tree_families import DATASETS

    X, y = (EXTRA_DATASETS.get(case.dataset) or DATASETS[case.task][case.dataset][1])()
    return tuple(train_test_split(X, y, test_size=0.25, random_state=0))


def metric(case: Case, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if case.task == "regression":
        from sklearn.metrics import r2_score

        return float(r2_score(y_true, y_pred))
    return float(np.mean(np.asarray(y_pred) == np.asarray(y_true)))


def concrete_ml_side(name: str, rows: int, batch: int, batch_budget_s: float) -> dict:
    case = CASES[name]
    python = HERE / ".venv-concrete-ml" / "bin" / "python"
    hp = MODELS[case.model][1]
    command = [str(python), str(HERE / "concrete_ml_side.py"), "--model", case.model, "--dataset", case.dataset]
    command += ["--rows", str(rows), "--batch", str(batch), "--batch-budget-s", str(batch_budget_s)]
    command += ["--n-bits", str(case.n_bits), "--max-depth", str(hp["max_depth"]), "--random-state", str(hp["random_state"])]
    if "n_estimators" in hp:
        command += ["--n-estimators", str(hp["n_estimators"])]
    start = time.perf_counter()
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # its log goes to our stderr
    result = json.loads(out.stdout)
    result["side_wall_time_s"] = time.perf_counter() - start
    return result


def _library_version(module: str) -> str:
    import importlib

    return getattr(importlib.import_module(module), "__version__", "?")


def veilml_side(name: str, rows: int, batch: int, encoding: str = "thermometer", global_p_error: float | None = None) -> dict:
    import veilml
    from veilml import Configuration
    from veilml.models.trees.families import FAMILIES, library_class
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    side_start = time.perf_counter()
    case = CASES[name]
    estimator_name, hp, _ = MODELS[case.model]
    X_train, X_test, y_train, y_test = load_case_data(case)

    model = getattr(veilml, estimator_name)(n_bits=case.n_bits, encoding=encoding, **hp)
    float_model = library_class(FAMILIES[estimator_name])(**hp).fit(X_train, y_train)  # same library and hyper-parameters
    model.fit(X_train, y_train)
    configuration = Configuration() if global_p_error is None else Configuration(global_p_error=global_p_error)
    start = time.perf_counter()
    model.compile(X_train, configuration)
    compile_time = time.perf_counter() - start
    clear = model.predict_integers(X_test, "disable")
    start = time.perf_counter()
    simulated = model.predict_integers(X_test, "simulate")
    simulate_time = time.perf_counter() - start
    codec = model.fhe_model_.codec
    predictions, simulated_predictions = codec.predict(clear), codec.predict(simulated)
    scores = model.decision_scores(X_test, "disable")

    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    start = time.perf_counter()
    client.keygen(force=True)
    keys = client.evaluation_keys()
    keygen_time = time.perf_counter() - start
    # The server checks and loads a client's evaluation keys once per key set (as veilml's servers do),
    # then runs rows under their key id.
    start = time.perf_counter()
    key_id = server.register(keys)
    registration_time = time.perf_counter() - start
    # One row per call, timed: encrypt (the envelope the client sends), run, decrypt.
    latencies, results, split = [], [], {"encrypt": [], "run": [], "decrypt": []}
    bytes_up = bytes_down = None
    for row in X_test[:rows]:
        start = time.perf_counter()
        (ciphertext,) = client.encrypt(row[None, :])
        encrypted = time.perf_counter()
        result = server.run_registered(ciphertext, key_id)
        ran = time.perf_counter()
        results.append(client.decrypt_integers(result))
        latencies.append(time.perf_counter() - start)
        split["encrypt"].append(encrypted - start)
        split["run"].append(ran - encrypted)
        split["decrypt"].append(start + latencies[-1] - ran)
        bytes_up, bytes_down = len(ciphertext), len(result)
    # A batch end to end: encrypt every row, run every row, decrypt every row.
    batch_rows = min(batch, len(X_test))
    batch_record: dict = {"batch_rows": batch_rows}
    batch_results: list[np.ndarray] = []
    if batch_rows:
        start = time.perf_counter()
        ciphertexts = client.encrypt(X_test[:batch_rows])
        encrypted = time.perf_counter()
        outputs = [server.run_registered(c, key_id) for c in ciphertexts]
        ran = time.perf_counter()
        batch_results = [client.decrypt_integers(r) for r in outputs]
        end = time.perf_counter()
        batch_record.update(
            batch_time_s=end - start,
            batch_split_s={"encrypt": encrypted - start, "run": ran - encrypted, "decrypt": end - ran},
            batch_throughput_rows_per_s=batch_rows / (end - start),
        )
    executed = results + batch_results
    expected = [*simulated[:rows], *simulated[:batch_rows]]
    agree = [bool(np.array_equal(a, b)) for a, b in zip(executed, expected)]
    executed_y = np.concatenate([y_test[:rows], y_test[:batch_rows]])

    report = model.report_
    ensemble = model.ensemble_
    combine = model.fhe_model_.output_combine
    fhe_report = model.fhe_report().to_dict()
    float_metric = metric(case, y_test, float_model.predict(X_test))
    record = {
        "side": "veilml",
        "case": name,
        "model": case.model,
        "task": case.task,
        "metric": case.metric,
        "dataset": {"name": case.dataset, "n_train": len(X_train), "n_test": len(X_test), "n_features": X_train.shape[1]},
        "encoding": encoding,
        "hyperparameters": {"n_bits": case.n_bits, **hp},
        "versions": {
            "veilml": veilml.__version__,
            "library": f"{float_model.__class__.__module__.split('.')[0]} "
            f"{_library_version(float_model.__class__.__module__.split('.')[0])}",
        },
        "lowering": dict(model.lowering_),
        "leaf_bits": int(model.leaf_bits_),
        "float_metric": float_metric,
        "metric_disable": metric(case, y_test, predictions),
        "metric_simulate": metric(case, y_test, simulated_predictions),
        "metric_execute": metric(case, executed_y, codec.predict(np.stack(executed))) if executed else None,
        "metric_execute_rows": len(executed),
        "simulate_agrees_with_disable": float(np.mean(np.all(clear == simulated, axis=1))),
        "execute_agrees_with_disable": bool(np.array_equal(np.stack(results), clear[:rows])) if results else None,
        "execute_equals_simulate": bool(all(agree)) if agree else None,
        "execute_equals_simulate_rows": int(sum(agree)),
        # The ensemble's sum is computed in the circuit: what the client decrypts per row is one
        # score per output (class), possibly as several digits, never one value per tree.
        "n_trees": len(ensemble.trees),
        "n_outputs": int(ensemble.n_outputs),
        "decrypted_integers_per_row": int(results[0].size) if results else int(clear.shape[1]),
        "decision_scores_shape": list(scores.shape),
        "output_combine_shape": None if combine is None else list(np.shape(combine)),
        "pbs_count": report.pbs_count,
        "pbs_by_precision": report.pbs_by_precision,
        "max_bit_width": report.max_bit_width,
        "complexity": report.complexity,
        "p_error": report.p_error,
        "global_p_error": report.global_p_error,
        "statistics_evaluation_key_size_bytes": report.evaluation_key_bytes,
        "compressed_evaluation_key_bytes": report.compressed_evaluation_key_bytes,
        "evaluation_key_serialized_bytes": len(keys),
        "bytes_up_per_row": bytes_up,
        "bytes_down_per_row": bytes_down,
        "input_ciphertext_bytes": bytes_up,
        "fhe_report": fhe_report,
        "compile_time_s": compile_time,
        "simulate_time_s": simulate_time,
        "keygen_time_s": keygen_time,
        "key_registration_s": registration_time,  # server side: check, hash and load the evaluation keys once
        "execute_rows": rows,
        "execute_latencies_s": latencies,
        "execute_latency_median_s": float(np.median(latencies)) if latencies else None,
        "execute_median_split_s": {k: float(np.median(v)) for k, v in split.items()} if latencies else {},
        **batch_record,
        "side_wall_time_s": time.perf_counter() - side_start,
    }
    if case.task == "classification":  # the keys of the first version of this file
        record["n_classes"] = int(len(model.classes_))
        record["float_accuracy"] = record["float_metric"]
        record["accuracy_disable"] = record["metric_disable"]
        record["accuracy_simulate"] = record["metric_simulate"]
    record["sum_inside_fhe"] = sum_inside_fhe(record)
    return record


def sum_inside_fhe(side: dict) -> bool:
    """The client decrypts only per-output scores: one decision score per output, from fewer
    decrypted integers than one per tree and output (each is a digit of one output's sum; for two
    classes the circuit may compute one output and the client derive the other)."""
    n_rows, n_columns = side["decision_scores_shape"]
    return n_columns == side["n_outputs"] and (
        side["n_trees"] == 1 or side["decrypted_integers_per_row"] < side["n_trees"] * side["n_outputs"]
    )


CML, OURS, AUTO, SAME_ERROR = "Concrete-ML 1.9", "veilml", "veilml, encoding='auto'", "veilml at Concrete-ML's global p_error"
VEILML_SIDES = {OURS: {}, AUTO: {"encoding": "auto"}, SAME_ERROR: {}}  # SAME_ERROR: + Concrete-ML's global_p_error

#: (label, key, format, ratio: None, "lower" (Concrete-ML / veilml) or "higher" (veilml / Concrete-ML is better))
ROWS = [
    ("PBS per row", "pbs_count", "{:,}", "lower"),
    ("max bit width", "max_bit_width", "{}", None),
    ("complexity", "complexity", "{:.3g}", "lower"),
    ("global p_error", "global_p_error", "{:.1e}", None),
    ("evaluation keys, serialized (MiB)", "evaluation_key_serialized_bytes", "{:.1f}", "lower"),
    ("keygen time (s)", "keygen_time_s", "{:.2f}", "lower"),
    ("bytes up per row (KiB)", "bytes_up_per_row", "{:.1f}", "lower"),
    ("bytes down per row (KiB)", "bytes_down_per_row", "{:.1f}", "lower"),
    ("median latency per row (s)", "execute_latency_median_s", "{:.3f}", "lower"),
    ("batch throughput (rows/s)", "batch_throughput_rows_per_s", "{:.3f}", "higher"),
    ("batch rows", "batch_rows", "{}", None),
    ("metric float (same library, same hyper-parameters)", "float_metric", "{:.4f}", None),
    ("metric disable (all test rows)", "metric_disable", "{:.4f}", None),
    ("metric simulate (all test rows)", "metric_simulate", "{:.4f}", None),
    ("metric execute (executed rows)", "metric_execute", "{:.4f}", None),
    ("simulate agrees with disable (share of test rows)", "simulate_agrees_with_disable", "{:.4f}", None),
    ("execute == simulate (executed rows)", "execute_equals_simulate_rows", "{}", None),
]
BYTES = {"evaluation_key_serialized_bytes": 2**20, "bytes_up_per_row": 2**10, "bytes_down_per_row": 2**10}
RATIOS = [(label, key, kind) for label, key, _, kind in ROWS if kind]
#: the acceptance lines of docs/benchmarks.md (Concrete-ML / veilml at least this much)
ACCEPTANCE = {"execute_latency_median_s": 10.0, "complexity": 15.0}


def ratio(sides: dict[str, dict], key: str, ours: str = OURS) -> float | None:
    """Concrete-ML / veilml for costs, veilml / Concrete-ML for throughput: above 1 is better for veilml."""
    theirs, mine = sides.get(CML, {}).get(key), sides.get(ours, {}).get(key)
    if not theirs or not mine:
        return None
    kind = next(kind for _, k, kind in RATIOS if k == key)
    return theirs / mine if kind == "lower" else mine / theirs


def all_ratios(sides: dict[str, dict], ours: str) -> dict[str, float | None]:
    return {key: ratio(sides, key, ours) for _, key, _ in RATIOS}


def acceptance(entry: dict, ratios_key: str) -> dict:
    """Whether the case meets the acceptance lines (and FHE metric no worse than Concrete-ML's)."""
    r = entry[ratios_key]
    sides = entry["sides"]
    ours = {"ratios_concrete_ml_over_veilml": OURS, "ratios_at_concrete_ml_p_error": SAME_ERROR, "ratios_auto": AUTO}[ratios_key]
    met = {key: (r.get(key) or 0) >= bound for key, bound in ACCEPTANCE.items()}
    theirs, mine = sides[CML].get("metric_simulate"), sides[ours].get("metric_simulate")
    met["metric_no_worse"] = theirs is not None and mine is not None and mine >= theirs
    return met


def table(sides: dict[str, dict]) -> str:
    names = list(sides)
    header = "| | " + " | ".join(names) + " | " + " | ".join(f"ratio, {n}" for n in names[1:]) + " |"
    lines = [header, "|---" * (2 * len(names)) + "|"]
    for label, key, fmt, kind in ROWS:
        values = [sides[n].get(key) for n in names]
        if key in BYTES:
            values = [v / BYTES[key] if v is not None else None for v in values]
        if key == "execute_equals_simulate_rows":
            cells = [
                f"{sides[n].get(key)}/{sides[n].get('metric_execute_rows', '?')}" if sides[n].get(key) is not None else "n/a"
                for n in names
            ]
        else:
            cells = [fmt.format(v) if v is not None else "n/a" for v in values]
        ratios = [ratio(sides, key, n) if kind else None for n in names[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(f"{r:.2f}x" if r else "" for r in ratios) + " |")
    return "\n".join(lines)


SUMMARY = [
    ("latency", "execute_latency_median_s"),
    ("complexity", "complexity"),
    ("PBS", "pbs_count"),
    ("eval. keys", "evaluation_key_serialized_bytes"),
    ("keygen", "keygen_time_s"),
    ("bytes up", "bytes_up_per_row"),
    ("bytes down", "bytes_down_per_row"),
    ("throughput", "batch_throughput_rows_per_s"),
]


def summary(cases: dict[str, dict], ratios_key: str) -> str:
    head = "| case | " + " | ".join(label for label, _ in SUMMARY) + " | latency ≥10x | complexity ≥15x | FHE metric no worse |"
    lines = [head, "|---" * (len(SUMMARY) + 4) + "|"]
    for entry in cases.values():
        r = entry[ratios_key]
        met = acceptance(entry, ratios_key)
        cells = [f"{r[key]:.1f}x" if r.get(key) else "n/a" for _, key in SUMMARY]
        verdicts = ["met" if met[k] else "**missed**" for k in (*ACCEPTANCE, "metric_no_worse")]
        lines.append(f"| {entry['title']} | " + " | ".join(cells + verdicts) + " |")
    return "\n".join(lines)


def execute_table(cases: dict[str, dict]) -> str:
    names = [CML, OURS, AUTO, SAME_ERROR]
    lines = ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for entry in cases.values():
        cells = []
        for n in names:
            side = entry["sides"].get(n, {})
            ok = side.get("execute_equals_simulate")
            cells.append(
                "n/a"
                if ok is None
                else f"{'yes' if ok else '**NO**'} ({side['execute_equals_simulate_rows']}/{side['metric_execute_rows']})"
            )
        lines.append(f"| {entry['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimate_table(sides: dict[str, dict]) -> str:
    """veilml's fhe_report() estimate (one core) against the measured medians of one row."""
    lines = [
        "| | encrypt est. / measured (s) | run est. / measured (s) | decrypt est. / measured (s) | total est. / measured (s) "
        "| bytes up est. / measured | bytes down est. / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (OURS, AUTO, SAME_ERROR):
        side = sides.get(name)
        if not side or not side.get("execute_median_split_s"):
            continue
        e, m = side["fhe_report"]["estimate"], side["execute_median_split_s"]
        lines.append(
            f"| {name} ({side['encoding']}) | {e['client_encrypt_s']:.3f} / {m['encrypt']:.3f} | {e['server_s']:.3f} / {m['run']:.3f} "
            f"| {e['client_decrypt_s']:.4f} / {m['decrypt']:.4f} | {e['total_s']:.3f} / {side['execute_latency_median_s']:.3f} "
            f"| {int(e['bytes_up']):,} / {side['bytes_up_per_row']:,} | {int(e['bytes_down']):,} / {side['bytes_down_per_row']:,} |"
        )
    return "\n".join(lines)


def outputs_sentence(ours: dict) -> str:
    scores = ours["decision_scores_shape"]
    verdict = "yes" if ours["sum_inside_fhe"] else "**NO**"
    return (
        f"Sum over trees inside FHE: {verdict}. The circuit adds the {ours['n_trees']} tree(s) itself: the client "
        f"decrypts {ours['decrypted_integers_per_row']} integer(s) per row (scores: {ours['lowering'].get('scores', '?')}), "
        f"which `decision_scores` turns into shape ({scores[0]}, {scores[1]}), one score per "
        f"{'class' if ours['task'] == 'classification' else 'output'}; no per-tree score is decrypted."
    )


def case_section(name: str, entry: dict) -> list[str]:
    sides = entry["sides"]
    ours, cml = sides[OURS], sides[CML]
    hp = ", ".join(f"{k}={v}" for k, v in ours["hyperparameters"].items())
    data = ours["dataset"]
    parts = [
        f"## {entry['title']} (`{name}`)\n",
        f"Data: `{data['name']}` ({data['n_train']} train, {data['n_test']} test rows, {data['n_features']} features); "
        f"metric: {ours['metric']}. Hyper-parameters: {hp}. Versions: veilml {ours['versions']['veilml']} with "
        f"{ours['versions']['library']}; Concrete-ML {cml['versions'].get('concrete-ml')} with scikit-learn "
        f"{cml['versions'].get('scikit-learn')}"
        + (f", xgboost {cml['versions'].get('xgboost')}" if ours["model"] == "xgboost" else "")
        + ".\n",
        table(sides) + "\n",
        "veilml's lowering: default "
        + "; ".join(f"{k}: {v}" for k, v in ours["lowering"].items())
        + ". With `encoding='auto'`: "
        + "; ".join(f"{k}: {v}" for k, v in sides[AUTO]["lowering"].items())
        + ".\n",
        f"veilml's circuit (default): max bit width {ours['max_bit_width']}, PBS by precision "
        + ", ".join(f"{k}-bit: {v}" for k, v in sorted(ours["pbs_by_precision"].items(), key=lambda kv: int(kv[0])))
        + f"; Concrete-ML's: max bit width {cml['max_bit_width']}.\n",
        outputs_sentence(ours)
        + (
            f" Concrete-ML's circuit returns shape {tuple(cml['circuit_output_shapes'][0])} per row "
            "(batch, outputs, trees): the client decrypts one score per output and tree and sums the trees in the clear.\n"
            if cml.get("circuit_output_shapes") and ours["n_trees"] > 1
            else "\n"
        ),
        "Estimated (`fhe_report()`, one core) against measured (median of the timed rows, this machine):\n",
        estimate_table(sides) + "\n",
    ]
    if ours["execute_median_split_s"]:
        parts.append(
            "Per-row latencies (s), in order: "
            + "; ".join(f"{n} " + ", ".join(f"{v:.2f}" for v in sides[n].get("execute_latencies_s", [])) for n in sides)
            + ". The first row of each side carries one-time costs (veilml's includes loading the evaluation keys "
            "into the server's cache).\n"
        )
    return parts


#: the tables of docs/benchmarks.md (first header cell, ratios shown, columns): tests/test_readme.py reads them back
README_TABLES = [
    (
        "case",
        "ratios_concrete_ml_over_veilml",
        [
            ("PBS", "pbs_count"),
            ("complexity", "complexity"),
            ("evaluation keys", "evaluation_key_serialized_bytes"),
            ("bytes up", "bytes_up_per_row"),
            ("bytes down", "bytes_down_per_row"),
            ("latency per row", "execute_latency_median_s"),
            ("batch throughput", "batch_throughput_rows_per_s"),
        ],
    ),
    (
        "case, at Concrete-ML's p_error",
        "ratios_at_concrete_ml_p_error",
        [
            ("complexity", "complexity"),
            ("evaluation keys", "evaluation_key_serialized_bytes"),
            ("latency per row", "execute_latency_median_s"),
            ("batch throughput", "batch_throughput_rows_per_s"),
        ],
    ),
    (
        "case, encoding='auto'",
        "ratios_auto",
        [
            ("PBS", "pbs_count"),
            ("complexity", "complexity"),
            ("bytes up", "bytes_up_per_row"),
            ("latency per row", "execute_latency_median_s"),
            ("batch throughput", "batch_throughput_rows_per_s"),
        ],
    ),
]


def readme_tables(cases: dict[str, dict]) -> str:
    """The copies of the ratios in docs/benchmarks.md (one decimal), ready to paste."""
    out = []
    for first, ratios_key, columns in README_TABLES:
        lines = [f"| {first} | " + " | ".join(label for label, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for entry in cases.values():
            r = entry[ratios_key]
            lines.append(
                f"| {entry['title']} | " + " | ".join(f"{r[key]:.1f}x" if r.get(key) else "n/a" for _, key in columns) + " |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def write(record: dict, args: argparse.Namespace) -> str:
    (RESULTS / f"{args.output}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    machine, source, cases = record["machine"], record["source"], record["cases"]
    parts = [
        "# Trees: veilml vs Concrete-ML 1.9, side by side\n",
        f"`{record['command']}` at commit {source['commit'][:7]}"
        f"{' (with uncommitted changes in src/)' if source['src_uncommitted_changes'] else ''} "
        f"on {machine['cpu_count']} cores ({machine['platform']}), {record['total_time_s'] / 60:.1f} min in all"
        f"{'' if record['complete'] else ' so far (run still going or interrupted)'}; "
        f"{record['rows']} encrypted rows timed one by one per side, then a batch of {record['batch']} rows "
        f"(Concrete-ML's batch cut to about {record['cml_batch_budget_s']:.0f} s: at least 2 rows), one side after "
        "the other in the same run"
        f"{' (Concrete-ML figures reused from its last run)' if args.skip_concrete_ml else ''}. "
        "Test split: `train_test_split(test_size=0.25, random_state=0)`. Hyper-parameters and n_bits: the same on "
        "both sides, every other one at its library's default; each side's float metric is its own library's model "
        "trained on the float features. Leaf values: Concrete-ML quantizes each tree's leaves to n_bits and sums the "
        "trees in the clear; veilml (default `leaf_bits=None`) gives a single tree's leaves n_bits and, where it "
        "compiles a value leaf stage (pairs or subtrees), sums an ensemble's trees in FHE into an (n_bits + 1)-bit score.\n",
        "Ratios: Concrete-ML / veilml for costs (time, PBS, complexity, keys, bytes), veilml / Concrete-ML for "
        "throughput: higher is better for veilml. Evaluation keys are the serialized bytes each client hands its "
        "server (both compressed). Bytes up / down: veilml's ciphertext and result envelopes of one row; "
        "Concrete-ML's serialized encrypted input and output of one row. Latency per row: encrypt + server run + "
        "decrypt of one row, median over the timed rows. Throughput: rows / seconds of one batch run end to end "
        "(encrypt all, run all, decrypt all). "
        f"Load average (1 min): {machine['load_average_1_5_15_min_at_start'][0]:.1f} at the start, "
        f"{machine['load_average_1_5_15_min_at_end'][0]:.1f} at the end; wall-clock ratios are noisier than the "
        "deterministic ones (PBS, complexity, key size).\n",
        "## Summary: veilml's default (thermometer encoding, default global p_error)\n",
        summary(cases, "ratios_concrete_ml_over_veilml") + "\n",
        "## Summary: veilml at Concrete-ML's global p_error (thermometer encoding)\n",
        summary(cases, "ratios_at_concrete_ml_p_error") + "\n",
        "## Summary: veilml with `encoding='auto'` (default global p_error)\n",
        summary(cases, "ratios_auto") + "\n",
        "## `execute` == `simulate` on every executed row (timed rows and batch rows)\n",
        execute_table(cases) + "\n",
    ]
    for name, entry in cases.items():
        parts += case_section(name, entry)
    parts += ["## The tables of docs/benchmarks.md (ratios, one decimal)\n", readme_tables(cases) + "\n"]
    text = "\n".join(parts)
    (RESULTS / f"{args.output}.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5, help="encrypted rows timed one by one per side")
    parser.add_argument("--batch", type=int, default=8, help="rows of the timed batch per side")
    parser.add_argument(
        "--cml-batch-budget-s", type=float, default=120.0, help="Concrete-ML's batch is cut (to at least 2 rows) to about this"
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--skip-concrete-ml", action="store_true", help="reuse the last Concrete-ML results")
    parser.add_argument("--output", default="trees", help="results/<output>.json and .md")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    run_start = time.perf_counter()
    load_start = os.getloadavg()
    if not args.skip_concrete_ml:
        subprocess.run(["bash", str(HERE / "concrete_ml_env.sh")], check=True)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()  # noqa: E731
    source = {"commit": git("rev-parse", "HEAD"), "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src"))}
    cases: dict[str, dict] = {}
    record = {
        "command": command,
        "source": source,
        "rows": args.rows,
        "batch": args.batch,
        "cml_batch_budget_s": args.cml_batch_budget_s,
        "cases": cases,
    }
    for name in args.cases:
        case = CASES[name]
        cml_path = RESULTS / f"concrete_ml_{name}.json"
        if args.skip_concrete_ml:
            cml = json.loads(cml_path.read_text())
        else:
            print(f"[trees] {name}: Concrete-ML side", file=sys.stderr, flush=True)
            cml = concrete_ml_side(name, args.rows, args.batch, args.cml_batch_budget_s)
            cml_path.write_text(json.dumps(cml, indent=2, sort_keys=True) + "\n")
        sides = {CML: cml}
        for side, options in VEILML_SIDES.items():
            print(f"[trees] {name}: {side}", file=sys.stderr, flush=True)
            p_error = cml["global_p_error"] if side == SAME_ERROR else None
            sides[side] = veilml_side(name, args.rows, args.batch, global_p_error=p_error, **options)
        entry = {"title": case.title, "model": case.model, "dataset": case.dataset, "n_bits": case.n_bits, "task": case.task}
        entry["ratios_concrete_ml_over_veilml"] = all_ratios(sides, OURS)
        entry["ratios_at_concrete_ml_p_error"] = all_ratios(sides, SAME_ERROR)
        entry["ratios_auto"] = all_ratios(sides, AUTO)
        entry["sides"] = sides
        cases[name] = entry
        for key in ("ratios_concrete_ml_over_veilml", "ratios_at_concrete_ml_p_error", "ratios_auto"):
            entry["acceptance_" + key.removeprefix("ratios_")] = acceptance(entry, key)
        _finish(record, run_start, load_start, complete=name == args.cases[-1])
        text = write(record, args)
    print(text)
    return 0


def _finish(record: dict, run_start: float, load_start: tuple, complete: bool) -> None:
    record["total_time_s"] = time.perf_counter() - run_start
    record["complete"] = complete
    record["machine"] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_1_5_15_min_at_start": load_start,
        "load_average_1_5_15_min_at_end": os.getloadavg(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
