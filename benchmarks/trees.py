"""veilml against Concrete-ML 1.9 on the same decision tree, side by side in one run.

    .venv/bin/python benchmarks/trees.py [--rows 5] [--skip-concrete-ml]

Breast cancer (scikit-learn), 25 % test split with seed 0, depth 5, 6 bits. Concrete-ML pins old
torch / scikit-learn / xgboost, so it runs in its own virtual environment
(``benchmarks/concrete_ml_env.sh`` builds it) through ``benchmarks/concrete_ml_side.py``, which prints
one JSON object. Deterministic figures (PBS count, complexity, key sizes) come first; wall-clock
figures are medians over ``--rows`` encrypted rows, measured on this machine in the same run.

Writes ``benchmarks/results/trees.json`` and ``benchmarks/results/trees.md``.
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


def concrete_ml_side(rows: int) -> dict:
    subprocess.run(["bash", str(HERE / "concrete_ml_env.sh")], check=True)
    python = HERE / ".venv-concrete-ml" / "bin" / "python"
    out = subprocess.run(
        [str(python), str(HERE / "concrete_ml_side.py"), "--model", "decision_tree", "--rows", str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def veilml_side(rows: int, global_p_error: float | None = None) -> dict:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier as FloatTree

    import veilml
    from veilml import Configuration, DecisionTreeClassifier
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    float_accuracy = FloatTree(max_depth=5, random_state=0).fit(X_train, y_train).score(X_test, y_test)

    model = DecisionTreeClassifier(max_depth=5, n_bits=6, random_state=0).fit(X_train, y_train)
    configuration = Configuration() if global_p_error is None else Configuration(global_p_error=global_p_error)
    start = time.perf_counter()
    model.compile(X_train, configuration)
    compile_time = time.perf_counter() - start
    clear = model.predict_integers(X_test, "disable")
    simulated = model.predict_integers(X_test, "simulate")

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
    predictions = model.predict(X_test, "disable")
    return {
        "side": "veilml",
        "veilml": veilml.__version__,
        "float_accuracy": float_accuracy,
        "accuracy_disable": float(np.mean(predictions == y_test)),
        "simulate_agrees_with_disable": bool(np.array_equal(clear, simulated)),
        "execute_agrees_with_disable": bool(np.array_equal(np.stack(results), clear[:rows])),
        "pbs_count": report.pbs_count,
        "pbs_by_precision": report.pbs_by_precision,
        "max_bit_width": report.max_bit_width,
        "complexity": report.complexity,
        "p_error": report.p_error,
        "global_p_error": report.global_p_error,
        "statistics_evaluation_key_size_bytes": report.evaluation_key_bytes,
        "evaluation_key_serialized_bytes": len(keys),
        "input_ciphertext_bytes": len(ciphertext),
        "compile_time_s": compile_time,
        "keygen_time_s": keygen_time,
        "execute_rows": rows,
        "execute_latencies_s": latencies,
        "execute_latency_median_s": float(np.median(latencies)),
        "execute_median_split_s": {k: float(np.median(v)) for k, v in split.items()},
    }


ROWS = [
    ("PBS per row", "pbs_count", "{:,}", True),
    ("max bit width", "max_bit_width", "{}", True),
    ("complexity", "complexity", "{:.3g}", True),
    ("global p_error", "global_p_error", "{:.1e}", False),
    ("evaluation keys, serialized (MiB)", "evaluation_key_serialized_bytes", "{:.1f}", True),
    ("keygen time (s)", "keygen_time_s", "{:.2f}", True),
    ("median latency per row (s)", "execute_latency_median_s", "{:.2f}", True),
    ("accuracy, disable (143 rows)", "accuracy_disable", "{:.4f}", False),
    ("float scikit-learn accuracy", "float_accuracy", "{:.4f}", False),
]


def table(sides: dict[str, dict]) -> str:
    names = list(sides)
    lines = ["| | " + " | ".join(names) + " | Concrete-ML / veilml |", "|---" * (len(names) + 2) + "|"]
    for label, key, fmt, ratio in ROWS:
        values = [sides[n].get(key) for n in names]
        if key == "evaluation_key_serialized_bytes":
            values = [v / 2**20 if v is not None else None for v in values]
        cells = [fmt.format(v) if v is not None else "n/a" for v in values]
        cml, ours = sides.get("Concrete-ML 1.9", {}).get(key), sides[names[-1 if len(names) == 1 else 1]].get(key)
        ratio_cell = f"{cml / ours:.1f}x" if ratio and cml and ours else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio_cell} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--skip-concrete-ml", action="store_true", help="reuse the last Concrete-ML result")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    cml_path = RESULTS / "concrete_ml_decision_tree.json"
    if args.skip_concrete_ml:
        cml = json.loads(cml_path.read_text())
    else:
        cml = concrete_ml_side(args.rows)
        cml_path.write_text(json.dumps(cml, indent=2, sort_keys=True) + "\n")
    ours = veilml_side(args.rows)
    same_error = veilml_side(args.rows, global_p_error=cml["global_p_error"])
    sides = {
        "Concrete-ML 1.9": cml,
        "veilml": ours,
        "veilml at Concrete-ML's global p_error": same_error,
    }
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    (RESULTS / "trees.json").write_text(json.dumps({"machine": machine, "sides": sides}, indent=2, default=str) + "\n")
    text = (
        "# Decision tree: breast cancer, depth 5, 6 bits\n\n"
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` on {machine['cpu_count']} cores "
        f"({machine['platform']}); {args.rows} encrypted rows per side, same run"
        f"{' (Concrete-ML figures reused from its last run)' if args.skip_concrete_ml else ''}.\n"
        "Ratios: Concrete-ML / veilml (default configuration), higher is better for veilml.\n\n" + table(sides) + "\n\n"
        "veilml's latency per row, split (medians, s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ours["execute_median_split_s"].items())
        + ". The client encrypts a thermometer code (1,890 bits per row, sent compressed); "
        "the server's share includes decompressing it.\n"
    )
    (RESULTS / "trees.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
