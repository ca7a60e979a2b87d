"""veilml against Concrete-ML 1.9 on the same tree models, side by side in one run.

    .venv/bin/python benchmarks/trees.py [--rows 3] [--models decision_tree random_forest xgboost]
                                         [--skip-concrete-ml]

Breast cancer (scikit-learn), 25 % test split with seed 0, 6 bits, three models: a decision tree of
depth 5, a random forest of 20 trees of depth 4 and an XGBoost classifier of 20 trees of depth 4
(``random_state=0`` everywhere, every other hyper-parameter at its library's default). Concrete-ML
pins old torch / scikit-learn / xgboost, so it runs in its own virtual environment
(``benchmarks/concrete_ml_env.sh`` builds it) through ``benchmarks/concrete_ml_side.py``, which prints
one JSON object. Deterministic figures (PBS count, complexity, key sizes) come first; wall-clock
figures are medians over ``--rows`` encrypted rows, measured on this machine in the same run, one
side after the other (never concurrently).

Writes ``benchmarks/results/trees.json``, ``benchmarks/results/trees.md`` and, per model,
``benchmarks/results/concrete_ml_<model>.json`` (Concrete-ML's raw output).
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
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: model name (concrete_ml_side.py --model) -> (title, veilml estimator, hyper-parameters)
MODELS: dict[str, tuple[str, str, dict]] = {
    "decision_tree": ("Decision tree, depth 5", "DecisionTreeClassifier", {"max_depth": 5, "random_state": 0}),
    "random_forest": (
        "Random forest, 20 trees of depth 4",
        "RandomForestClassifier",
        {"n_estimators": 20, "max_depth": 4, "random_state": 0},
    ),
    "xgboost": ("XGBoost, 20 trees of depth 4", "XGBClassifier", {"n_estimators": 20, "max_depth": 4, "random_state": 0}),
}
N_BITS = 6


def concrete_ml_side(model: str, rows: int) -> dict:
    python = HERE / ".venv-concrete-ml" / "bin" / "python"
    hp = MODELS[model][2]
    command = [str(python), str(HERE / "concrete_ml_side.py"), "--model", model, "--rows", str(rows)]
    command += ["--n-bits", str(N_BITS), "--max-depth", str(hp["max_depth"]), "--random-state", str(hp["random_state"])]
    if "n_estimators" in hp:
        command += ["--n-estimators", str(hp["n_estimators"])]
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    result["side_wall_time_s"] = time.perf_counter() - start
    return result


def _library_version(module: str) -> str:
    import importlib

    return getattr(importlib.import_module(module), "__version__", "?")


def veilml_side(model_name: str, rows: int, global_p_error: float | None = None) -> dict:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    import veilml
    from veilml import Configuration
    from veilml.models.tree_families import FAMILIES, library_class
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    side_start = time.perf_counter()
    _, estimator_name, hp = MODELS[model_name]
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

    model = getattr(veilml, estimator_name)(n_bits=N_BITS, **hp)
    float_model = library_class(FAMILIES[estimator_name])(**hp).fit(X_train, y_train)  # same library and hyper-parameters
    float_accuracy = float(np.mean(float_model.predict(X_test) == y_test))
    model.fit(X_train, y_train)
    configuration = Configuration() if global_p_error is None else Configuration(global_p_error=global_p_error)
    start = time.perf_counter()
    model.compile(X_train, configuration)
    compile_time = time.perf_counter() - start
    clear = model.predict_integers(X_test, "disable")
    simulated = model.predict_integers(X_test, "simulate")
    predictions = model.predict(X_test, "disable")
    simulated_predictions = model.predict(X_test, "simulate")
    scores = model.decision_scores(X_test, "disable")

    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    start = time.perf_counter()
    client.keygen(force=True)
    keys = client.evaluation_keys()
    keygen_time = time.perf_counter() - start
    latencies, results, split = [], [], {"encrypt": [], "run": [], "decrypt": []}
    for row in X_test[:rows]:
        start = time.perf_counter()
        (ciphertext,) = client.encrypt(row[None, :])
        encrypted = time.perf_counter()
        result = server.run(ciphertext, keys)
        ran = time.perf_counter()
        results.append(client.decrypt_integers(result))
        latencies.append(time.perf_counter() - start)
        split["encrypt"].append(encrypted - start)
        split["run"].append(ran - encrypted)
        split["decrypt"].append(start + latencies[-1] - ran)
    report = model.report_
    ensemble = model.ensemble_
    combine = model.fhe_model_.output_combine
    return {
        "side": "veilml",
        "model": model_name,
        "hyperparameters": {"n_bits": N_BITS, **hp},
        "versions": {
            "veilml": veilml.__version__,
            "library": f"{float_model.__class__.__module__.split('.')[0]} "
            f"{_library_version(float_model.__class__.__module__.split('.')[0])}",
        },
        "float_accuracy": float_accuracy,
        "accuracy_disable": float(np.mean(predictions == y_test)),
        "accuracy_simulate": float(np.mean(simulated_predictions == y_test)),
        "simulate_agrees_with_disable": float(np.mean(np.all(clear == simulated, axis=1))),
        "execute_agrees_with_disable": bool(np.array_equal(np.stack(results), clear[:rows])),
        # The ensemble's sum is computed in the circuit: what the client decrypts per row is one
        # score per output (class), possibly as several digits, never one value per tree.
        "n_trees": len(ensemble.trees),
        "n_outputs": int(ensemble.n_outputs),
        "n_classes": int(len(model.classes_)),
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
        "input_ciphertext_bytes": len(ciphertext) if rows else None,
        "compile_time_s": compile_time,
        "keygen_time_s": keygen_time,
        "execute_rows": rows,
        "execute_latencies_s": latencies,
        "execute_latency_median_s": float(np.median(latencies)) if latencies else None,
        "execute_median_split_s": {k: float(np.median(v)) for k, v in split.items()} if latencies else {},
        "side_wall_time_s": time.perf_counter() - side_start,
    }


def sum_inside_fhe(side: dict) -> bool:
    """The client decrypts only per-class scores: one decision score per output, and fewer
    decrypted integers than per-tree scores would need (each is a digit of one output's sum)."""
    n_rows, n_columns = side["decision_scores_shape"]
    per_output = side["decrypted_integers_per_row"] / side["n_outputs"]
    return (
        n_columns == side["n_outputs"]
        and per_output == int(per_output)
        and (side["n_trees"] == 1 or side["decrypted_integers_per_row"] < side["n_trees"] * side["n_outputs"])
    )


CML, OURS, SAME_ERROR = "Concrete-ML 1.9", "veilml", "veilml at Concrete-ML's global p_error"
ROWS = [
    ("PBS per row", "pbs_count", "{:,}", True),
    ("max bit width", "max_bit_width", "{}", False),
    ("complexity", "complexity", "{:.3g}", True),
    ("global p_error", "global_p_error", "{:.1e}", False),
    ("evaluation keys, serialized (MiB)", "evaluation_key_serialized_bytes", "{:.1f}", True),
    ("keygen time (s)", "keygen_time_s", "{:.2f}", True),
    ("median latency per row (s)", "execute_latency_median_s", "{:.2f}", True),
    ("accuracy, disable (143 rows)", "accuracy_disable", "{:.4f}", False),
    ("accuracy, simulate (143 rows)", "accuracy_simulate", "{:.4f}", False),
    ("simulate agrees with disable (share of rows)", "simulate_agrees_with_disable", "{:.4f}", False),
    ("execute agrees with disable (timed rows)", "execute_agrees_with_disable", "{}", False),
    ("float accuracy (same library, same hyper-parameters)", "float_accuracy", "{:.4f}", False),
]
RATIOS = [row for row in ROWS if row[3]]


def ratio(sides: dict[str, dict], key: str) -> float | None:
    theirs, ours = sides.get(CML, {}).get(key), sides.get(OURS, {}).get(key)
    return theirs / ours if theirs and ours else None


def table(sides: dict[str, dict]) -> str:
    names = list(sides)
    lines = ["| | " + " | ".join(names) + " | Concrete-ML / veilml |", "|---" * (len(names) + 2) + "|"]
    for label, key, fmt, with_ratio in ROWS:
        values = [sides[n].get(key) for n in names]
        if key == "evaluation_key_serialized_bytes":
            values = [v / 2**20 if v is not None else None for v in values]
        cells = [fmt.format(v) if v is not None else "n/a" for v in values]
        r = ratio(sides, key) if with_ratio else None
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {f'{r:.2f}x' if r else ''} |")
    return "\n".join(lines)


def summary(models: dict[str, dict]) -> str:
    lines = ["| model | " + " | ".join(label for label, *_ in RATIOS) + " |", "|---" * (len(RATIOS) + 1) + "|"]
    for name, entry in models.items():
        cells = [ratio(entry["sides"], key) for _, key, *_ in RATIOS]
        lines.append(f"| {MODELS[name][0]} | " + " | ".join(f"{c:.2f}x" if c else "n/a" for c in cells) + " |")
    return "\n".join(lines)


def outputs_sentence(name: str, ours: dict) -> str:
    scores = ours["decision_scores_shape"]
    digits = ours["decrypted_integers_per_row"] // max(ours["n_outputs"], 1)
    verdict = "yes" if ours["sum_inside_fhe"] else "**NO**"
    return (
        f"Sum over trees inside FHE: {verdict}. The circuit adds the {ours['n_trees']} tree(s) itself: the client "
        f"decrypts {ours['decrypted_integers_per_row']} integer(s) per row ({ours['n_outputs']} output(s) × {digits} "
        f"digit(s)), which `decision_scores` turns into shape ({scores[0]}, {scores[1]}), one score per "
        f"{'class' if ours['n_outputs'] > 1 else 'row (the margin of the positive class)'}; "
        f"no per-tree score is decrypted."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3, help="encrypted rows timed per side")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--skip-concrete-ml", action="store_true", help="reuse the last Concrete-ML results")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    run_start = time.perf_counter()
    load_start = os.getloadavg()
    if not args.skip_concrete_ml:
        subprocess.run(["bash", str(HERE / "concrete_ml_env.sh")], check=True)
    models: dict[str, dict] = {}
    for name in args.models:
        cml_path = RESULTS / f"concrete_ml_{name}.json"
        if args.skip_concrete_ml:
            cml = json.loads(cml_path.read_text())
        else:
            print(f"[trees] {name}: Concrete-ML side", file=sys.stderr, flush=True)
            cml = concrete_ml_side(name, args.rows)
            cml_path.write_text(json.dumps(cml, indent=2, sort_keys=True) + "\n")
        print(f"[trees] {name}: veilml side", file=sys.stderr, flush=True)
        ours = veilml_side(name, args.rows)
        ours["sum_inside_fhe"] = sum_inside_fhe(ours)
        print(f"[trees] {name}: veilml at Concrete-ML's global p_error", file=sys.stderr, flush=True)
        same_error = veilml_side(name, args.rows, global_p_error=cml["global_p_error"])
        same_error["sum_inside_fhe"] = sum_inside_fhe(same_error)
        sides = {CML: cml, OURS: ours, SAME_ERROR: same_error}
        ratios = {key: ratio(sides, key) for _, key, *_ in RATIOS}
        models[name] = {"title": MODELS[name][0], "ratios_concrete_ml_over_veilml": ratios, "sides": sides}
    total = time.perf_counter() - run_start

    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_1_5_15_min_at_start": load_start,
        "load_average_1_5_15_min_at_end": os.getloadavg(),
    }
    command = " ".join([Path(sys.executable).name, *sys.argv])
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()  # noqa: E731
    source = {"commit": git("rev-parse", "HEAD"), "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src"))}
    record = {
        "command": command,
        "machine": machine,
        "source": source,
        "rows": args.rows,
        "total_time_s": total,
        "models": models,
    }
    (RESULTS / "trees.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    parts = [
        f"# Trees: veilml vs Concrete-ML 1.9, breast cancer, {N_BITS} bits\n",
        f"`{command}` at commit {source['commit'][:7]}"
        f"{' (with uncommitted changes in src/)' if source['src_uncommitted_changes'] else ''} "
        f"on {machine['cpu_count']} cores ({machine['platform']}), {total / 60:.1f} min in all; "
        f"{args.rows} encrypted rows per side, one side after the other in the same run"
        f"{' (Concrete-ML figures reused from its last run)' if args.skip_concrete_ml else ''}. "
        "Data: `load_breast_cancer`, `train_test_split(test_size=0.25, random_state=0)` (426 train, 143 test rows). "
        "Hyper-parameters: the same on both sides (below), every other one at its library's default; each side's "
        "float accuracy is its own library's model trained on the float features.\n",
        "Ratios are Concrete-ML / veilml (veilml in its default configuration): higher is better for veilml. "
        "Evaluation keys are the serialized bytes each client hands its server (both compressed by default). "
        "Latency per row is encrypt + server run + decrypt of one row, median over the timed rows. "
        f"Load average (1 min) on the machine: {machine['load_average_1_5_15_min_at_start'][0]:.1f} at the start, "
        f"{machine['load_average_1_5_15_min_at_end'][0]:.1f} at the end; other jobs may share the cores, so "
        "wall-clock ratios are noisier than the deterministic ones (PBS, complexity, key size).\n",
        "## Summary: Concrete-ML / veilml\n",
        summary(models) + "\n",
    ]
    for name, entry in models.items():
        sides = entry["sides"]
        ours, cml = sides[OURS], sides[CML]
        hp = ", ".join(f"{k}={v}" for k, v in ours["hyperparameters"].items())
        parts += [
            f"## {entry['title']}\n",
            f"Hyper-parameters: {hp}. Versions: veilml {ours['versions']['veilml']} with {ours['versions']['library']}; "
            f"Concrete-ML {cml['versions'].get('concrete-ml')} with scikit-learn {cml['versions'].get('scikit-learn')}"
            + (f", xgboost {cml['versions'].get('xgboost')}" if name == "xgboost" else "")
            + ".\n",
            table(sides) + "\n",
            f"veilml's circuit: max bit width {ours['max_bit_width']}, PBS by precision "
            + ", ".join(f"{k}-bit: {v}" for k, v in sorted(ours["pbs_by_precision"].items(), key=lambda kv: int(kv[0])))
            + f"; Concrete-ML's: max bit width {cml['max_bit_width']}."
            + (
                f" veilml's {ours['max_bit_width']}-bit values are the encrypted sums (leveled additions, no PBS); "
                f"every PBS is at {max(int(k) for k in ours['pbs_by_precision'])} bits or less.\n"
                if ours["max_bit_width"] > max(int(k) for k in ours["pbs_by_precision"])
                else "\n"
            ),
            outputs_sentence(name, ours)
            + (
                f" Concrete-ML's circuit returns shape {tuple(cml['circuit_output_shapes'][0])} per row "
                "(batch, classes, trees): the client decrypts one score per class and tree and sums the trees in the clear.\n"
                if cml.get("circuit_output_shapes") and ours["n_trees"] > 1
                else "\n"
            ),
        ]
        if ours["execute_median_split_s"]:
            parts.append(
                "veilml's latency per row, split (medians, s): "
                + ", ".join(f"{k} {v:.3f}" for k, v in ours["execute_median_split_s"].items())
                + ". The client encrypts a thermometer code of every feature (sent compressed); the server's "
                "share includes decompressing it. Per-row latencies (s), in order: veilml "
                + ", ".join(f"{v:.2f}" for v in ours["execute_latencies_s"])
                + " (the first row of each side carries one-time costs; veilml's includes loading the evaluation "
                "keys into the server's cache); Concrete-ML "
                + ", ".join(f"{v:.2f}" for v in cml.get("execute_latencies_s", []))
                + ".\n"
            )
    text = "\n".join(parts)
    (RESULTS / "trees.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
