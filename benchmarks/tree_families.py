"""Acceptance table: every tree family, classifier and regressor, on three scikit-learn data sets.

    .venv/bin/python benchmarks/tree_families.py [--only XGB LGBM] [--datasets wine] [--resume]

For each estimator of ``veilml.models.trees.families.FAMILIES`` and each data set of its task
(25 % test split, seed 0): the float metric of the library's own model (same hyper-parameters,
float features), veilml's ``fhe="disable"`` metric at ``n_bits="auto"`` and at ``n_bits=6`` with
``train_on="float"`` (and, alongside, with the default ``train_on="codes"``), the chosen bits (``n_bits_``, ``leaf_bits_``), and, for the auto-bits model compiled on the training
rows, whether ``predict_integers(X_test, "simulate")`` equals ``"disable"`` on every test row, with
the circuit's PBS count, largest precision and complexity. Accuracy for classifiers, R² for
regressors. A row misses the tolerance when its auto-bits metric is more than 1 accuracy point
(0.02 of R²) below the float one.

Writes ``benchmarks/results/tree_families.json`` (after every row, so ``--resume`` can pick up an
interrupted run) and ``docs/tree_families.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "benchmarks" / "results" / "tree_families.json"
MD_PATH = ROOT / "docs" / "tree_families.md"

#: family stem -> hyper-parameters passed to the library (small models: the table must run in minutes)
HYPER_PARAMETERS: dict[str, dict[str, Any]] = {
    "DecisionTree": {"max_depth": 4, "random_state": 0},
    "RandomForest": {"n_estimators": 20, "max_depth": 4, "random_state": 0},
    "ExtraTrees": {"n_estimators": 20, "max_depth": 4, "random_state": 0},
    "GradientBoosting": {"n_estimators": 20, "max_depth": 3, "random_state": 0},
    "HistGradientBoosting": {"max_iter": 20, "max_depth": 3, "random_state": 0},
    "XGB": {"n_estimators": 20, "max_depth": 3, "random_state": 0},
    "LGBM": {"n_estimators": 20, "max_depth": 3, "random_state": 0},
}
#: largest loss of the auto-bits disable metric against float that the acceptance allows
TOLERANCE = {"classification": 0.01, "regression": 0.02}
TEST_SIZE, SEED = 0.25, 0
#: how the measured estimators train (``train_on``); the default ``"codes"`` is measured alongside
TRAIN_ON = "float"


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def _wine():
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


def _classification_60():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=600, n_features=60, n_informative=12, n_redundant=8, random_state=SEED)


def _diabetes():
    from sklearn.datasets import load_diabetes

    return load_diabetes(return_X_y=True)


def _friedman1():
    from sklearn.datasets import make_friedman1

    return make_friedman1(n_samples=600, n_features=10, noise=1.0, random_state=SEED)


def _regression_60():
    from sklearn.datasets import make_regression

    return make_regression(n_samples=600, n_features=60, n_informative=12, noise=10.0, random_state=SEED)


#: task -> data set name -> (how it is made, in words; loader)
DATASETS: dict[str, dict[str, tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]]] = {
    "classification": {
        "breast_cancer": ("`load_breast_cancer()`: 569 rows, 30 features, 2 classes", _breast_cancer),
        "wine": ("`load_wine()`: 178 rows, 13 features, 3 classes", _wine),
        "classification_60": (
            "`make_classification(n_samples=600, n_features=60, n_informative=12, n_redundant=8, random_state=0)`: 2 classes",
            _classification_60,
        ),
    },
    "regression": {
        "diabetes": ("`load_diabetes()`: 442 rows, 10 features", _diabetes),
        "friedman1": ("`make_friedman1(n_samples=600, n_features=10, noise=1.0, random_state=0)`", _friedman1),
        "regression_60": (
            "`make_regression(n_samples=600, n_features=60, n_informative=12, noise=10.0, random_state=0)`",
            _regression_60,
        ),
    },
}


def _stem(name: str) -> str:
    return name.removesuffix("Classifier").removesuffix("Regressor")


def _library_version(module: str) -> str:
    import importlib

    top = module.split(".")[0]
    return f"{top} {getattr(importlib.import_module(top), '__version__', '?')}"


def measure(name: str, dataset: str) -> dict[str, Any]:
    """One row of the table: estimator ``name`` on ``dataset``."""
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split

    import veilml
    from veilml.models.trees.families import FAMILIES, library_class
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    family = FAMILIES[name]
    classifier = family.task == "classification"
    metric = accuracy_score if classifier else r2_score
    hp = HYPER_PARAMETERS[_stem(name)]
    X, y = DATASETS[family.task][dataset][1]()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SIZE, random_state=SEED)
    row: dict[str, Any] = {
        "estimator": name,
        "family": _stem(name),
        "task": family.task,
        "dataset": dataset,
        "hyperparameters": hp,
        "library": _library_version(family.module),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_features": int(X.shape[1]),
        "n_classes": int(len(np.unique(y))) if classifier else None,
    }
    start = time.perf_counter()

    float_model = library_class(family)(**hp).fit(X_train, y_train)
    row["float_metric"] = float(metric(y_test, float_model.predict(X_test)))

    estimator = getattr(veilml, name)
    # The default training (on the codes): the auto bits and metrics, for comparison.
    codes = estimator(n_bits="auto", train_on="codes", **hp).fit(X_train, y_train)
    row["codes_n_bits_"], row["codes_leaf_bits_"] = int(codes.n_bits_), int(codes.leaf_bits_)
    row["codes_metric_auto"] = float(metric(y_test, codes.predict(X_test, "disable")))
    six = estimator(n_bits=6, train_on="codes", **hp).fit(X_train, y_train)
    row["codes_metric_6"] = float(metric(y_test, six.predict(X_test, "disable")))
    row["codes_within_tolerance"] = bool(row["float_metric"] - row["codes_metric_auto"] <= TOLERANCE[family.task] + 1e-12)

    # The acceptance model: trained in float, thresholds rounded to the auto-chosen grid.
    t = time.perf_counter()
    auto = estimator(n_bits="auto", train_on=TRAIN_ON, **hp).fit(X_train, y_train)
    row["fit_auto_s"] = time.perf_counter() - t
    row["n_bits_"], row["leaf_bits_"] = int(auto.n_bits_), int(auto.leaf_bits_)
    chosen_on = getattr(auto, "auto_bits_report_", None)  # the cross-validated figures the bits were chosen on
    if chosen_on is not None:
        row["auto_bits_report"] = json.loads(json.dumps(chosen_on, default=float))
    row["metric_auto"] = float(metric(y_test, auto.predict(X_test, "disable")))
    six = estimator(n_bits=6, train_on=TRAIN_ON, **hp).fit(X_train, y_train)
    row["metric_6"] = float(metric(y_test, six.predict(X_test, "disable")))

    t = time.perf_counter()
    auto.compile(X_train)
    row["compile_s"] = time.perf_counter() - t
    t = time.perf_counter()
    clear = auto.predict_integers(X_test, "disable")
    simulated = auto.predict_integers(X_test, "simulate")
    row["simulate_s"] = time.perf_counter() - t
    row["simulate_rows_equal"] = int(np.sum(np.all(clear == simulated, axis=1)))
    row["simulate_equals_disable"] = bool(row["simulate_rows_equal"] == len(y_test))
    report = auto.report_
    row["n_trees"] = len(auto.ensemble_.trees)
    row["decrypted_integers_per_row"] = int(clear.shape[1])
    row["pbs_count"] = int(report.pbs_count)
    row["pbs_by_precision"] = {str(k): int(v) for k, v in report.pbs_by_precision.items()}
    row["max_bit_width"] = int(report.max_bit_width)
    row["complexity"] = float(report.complexity)
    row["loss_auto"] = row["float_metric"] - row["metric_auto"]
    row["within_tolerance"] = bool(row["loss_auto"] <= TOLERANCE[family.task] + 1e-12)
    row["within_tolerance_6"] = bool(row["float_metric"] - row["metric_6"] <= TOLERANCE[family.task] + 1e-12)
    row["total_s"] = time.perf_counter() - start
    return row


# ----------------------------------------------------------------------------------- report
def _metric_name(task: str) -> str:
    return "accuracy" if task == "classification" else "R²"


def render(record: dict[str, Any]) -> str:
    rows = record["rows"]
    from veilml.models.trees.families import FAMILIES

    def fmt(v: float) -> str:
        return f"{v:.3f}"

    lines = [
        "# Tree families: float against encrypted, every family, classifier and regressor",
        "",
        f"Made by `{record['command']}` on {record['machine']['cpu_count']} cores ({record['machine']['platform']}, "
        f"Python {record['machine']['python']}; {', '.join(record['versions'])}), "
        f"{record['total_time_s'] / 60:.1f} min of measurement in all, at commit {record['source']['commit'][:7]}"
        f"{' (with uncommitted changes in src/)' if record['source']['src_uncommitted_changes'] else ''}"
        + (f"; {record['source']['note']}" if record["source"].get("note") else "")
        + ". Raw figures: `benchmarks/results/tree_families.json`.",
        "",
        f"Each data set is split by `train_test_split(test_size={TEST_SIZE}, random_state={SEED})`. Columns:",
        "",
        "- **float**: the library's own model (scikit-learn, XGBoost, LightGBM) with the same hyper-parameters, "
        "trained on the float features; accuracy for classifiers, R² for regressors, on the test rows.",
        '- **auto**, **6 bits**: veilml\'s `fhe="disable"` metric (the exact integers the circuit computes) with '
        f'`n_bits="auto"` and with `n_bits=6` (leaf bits 6), `train_on="{TRAIN_ON}"`: the library\'s model trained on '
        "the float features, each threshold rounded to the nearest code boundary.",
        '- **bits**: the precisions `n_bits="auto"` chose, `n_bits_`/`leaf_bits_`.',
        '- **codes: auto, 6 bits, bits**: the same with `train_on="codes"` (the default: the library\'s model '
        "trained on the quantized features). A model trained on codes is another model than the float one, and on "
        "these small test sets the difference between two trainings is as large as the tolerance "
        "(`docs/auto_bits.md`).",
        '- **sim = dis**: test rows on which `predict_integers(X_test, "simulate")` (the compiled circuit, '
        'auto bits) equals `predict_integers(X_test, "disable")`, out of all test rows.',
        "- **PBS**, **max bits**, **complexity**: the auto-bits circuit's `report_` (per row).",
        "- **trees**: trees in the converted ensemble (boosting on k > 2 classes has one tree per class and round).",
        "",
        "Hyper-parameters (every other one at its library's default):",
        "",
    ]
    for stem, hp in HYPER_PARAMETERS.items():
        lines.append(f"- {stem}: " + ", ".join(f"`{k}={v!r}`" for k, v in hp.items()))
    lines += ["", "Data sets:", ""]
    for task, sets in DATASETS.items():
        for name, (words, _) in sets.items():
            lines.append(f"- {name} ({task}): {words}")
    lines.append("")

    misses = [r for r in rows if not r.get("error") and not r["within_tolerance"]]
    disagreements = [r for r in rows if not r.get("error") and not r["simulate_equals_disable"]]
    errors = [r for r in rows if r.get("error")]
    expected = [(n, d) for n, f in FAMILIES.items() for d in DATASETS[f.task]]
    done = {(r["estimator"], r["dataset"]) for r in rows}
    missing = [f"{n} on {d}" for n, d in expected if (n, d) not in done]
    lines += ["## Summary", ""]
    lines.append(
        f"{len(rows) - len(errors)} rows measured ({len({r['estimator'] for r in rows})} estimators × their task's data sets)"
        + (f"; {len(errors)} failed" if errors else "")
        + (f"; not measured: {', '.join(missing)}" if missing else "")
        + "."
    )
    lines.append(
        "- `simulate` equals `disable` on every test row: "
        + (
            "**yes, in every row**."
            if not disagreements
            else "**no** in "
            + ", ".join(f"{r['estimator']} on {r['dataset']} ({r['simulate_rows_equal']}/{r['n_test']})" for r in disagreements)
            + "."
        )
    )
    if misses:
        lines.append(
            f"- **{len(misses)} rows where the encrypted (auto-bits, `disable`) metric is not within 1 accuracy point "
            "(0.02 of R²) of float**:"
        )
        for r in misses:
            lines.append(
                f"  - {r['estimator']} on {r['dataset']} ({r['n_bits_']}/{r['leaf_bits_']} bits): "
                f"{fmt(r['metric_auto'])} against {fmt(r['float_metric'])} float ({_metric_name(r['task'])}), "
                f"loss {r['loss_auto']:.3f}"
                + (
                    f" = {round(r['loss_auto'] * r['n_test'])} of {r['n_test']} test rows"
                    if r["task"] == "classification"
                    else ""
                )
                + f"; at 6 bits {fmt(r['metric_6'])}"
                + ("" if r["within_tolerance_6"] else ", also out of tolerance")
            )
    else:
        lines.append("- Every row's auto-bits metric is within 1 accuracy point (0.02 of R²) of float.")
    measured = [r for r in rows if not r.get("error")]
    lines.append(
        f"- Within tolerance of float: {sum(r['within_tolerance'] for r in measured)} of {len(measured)} rows at the "
        f"auto bits, {sum(r['within_tolerance_6'] for r in measured)} of {len(measured)} at 6 bits. The auto bits are "
        f"chosen on the training rows only ({record.get('auto_bits_rule', 'see `veilml.models.trees.auto_bits`')}); "
        "the table judges them on the test rows: one wine test row is 2.2 accuracy points, one breast-cancer row 0.7."
    )
    if measured and "codes_metric_auto" in measured[0]:
        lines.append(
            f'- With `train_on="codes"` (the default): {sum(r["codes_within_tolerance"] for r in measured)} of '
            f"{len(measured)} rows within tolerance at the auto bits. Why training on codes misses (4 rows miss even at "
            "8/8 bits; selection rules compared): `docs/auto_bits.md`."
        )
    for r in errors:
        lines.append(f"- **{r['estimator']} on {r['dataset']} failed:** `{r['error']}`")
    lines.append("")

    for task in DATASETS:
        metric = _metric_name(task)
        lines += [
            f"## {'Classifiers' if task == 'classification' else 'Regressors'} ({metric})",
            "",
            "| estimator | data set | float | auto | 6 bits | bits (n/leaf) | sim = dis | trees | PBS | max bits "
            "| complexity | within tolerance | codes: auto | codes: 6 bits | codes: bits |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["task"] != task:
                continue
            if r.get("error"):
                lines.append(f"| {r['estimator']} | {r['dataset']} | failed: {r['error'][:80]} ||||||||||||| |")
                continue
            lines.append(
                f"| {r['estimator']} | {r['dataset']} | {fmt(r['float_metric'])} | {fmt(r['metric_auto'])} | "
                f"{fmt(r['metric_6'])} | {r['n_bits_']}/{r['leaf_bits_']} | {r['simulate_rows_equal']}/{r['n_test']} | "
                f"{r['n_trees']} | {r['pbs_count']:,} | {r['max_bit_width']} | {r['complexity']:.3g} | "
                f"{'yes' if r['within_tolerance'] else '**no**'} | {fmt(r['codes_metric_auto'])} | "
                f"{fmt(r['codes_metric_6'])} | {r['codes_n_bits_']}/{r['codes_leaf_bits_']} |"
            )
        lines.append("")
    lines.append(
        "Seconds per row (fits with auto bits and at 6, both trainings, + compile + simulate): "
        + ", ".join(f"{r['estimator']}/{r['dataset']} {r['total_s']:.0f}" for r in rows if not r.get("error"))
        + "."
    )
    return "\n".join(lines) + "\n"


def _source_state() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src"))}


def main() -> int:
    from veilml.models.trees.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="STEM", help="family stems to measure (e.g. XGB RandomForest)")
    parser.add_argument("--datasets", nargs="+", help="data set names to measure")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in the JSON, measure the others")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON")
    args = parser.parse_args()

    previous = json.loads(JSON_PATH.read_text()) if (args.resume or args.render_only) and JSON_PATH.exists() else None
    if args.render_only:
        MD_PATH.write_text(render(previous))
        return 0
    rows: list[dict[str, Any]] = list(previous["rows"]) if previous else []
    elapsed = previous["total_time_s"] if previous else 0.0
    done = {(r["estimator"], r["dataset"]) for r in rows if not r.get("error")}
    rows = [r for r in rows if not r.get("error")]
    import importlib.metadata

    import sklearn

    versions = [f"scikit-learn {sklearn.__version__}"]
    for module in ("xgboost", "lightgbm", "treelite"):
        try:
            versions.append(_library_version(module))
        except ImportError:
            pass
    versions.append(f"concrete-python {importlib.metadata.version('concrete-python')}")
    source = _source_state()
    from veilml.models.trees import auto_bits

    folds = getattr(auto_bits, "FOLDS", None)
    auto_bits_rule = (f"{folds}-fold cross-validation" if folds else "one held-out fifth") + (
        f" of the agreement with the float model's predictions (at least {1 - auto_bits.AGREEMENT_TOLERANCE:.3f} "
        'of equal labels, or 1 - MSE / var(y)) for the measured `train_on="float"` models; of the metric against '
        f"the float model's, tolerance {auto_bits.TOLERANCE['classification']} accuracy, "
        f'{auto_bits.TOLERANCE["regression"]} R², for `train_on="codes"`; `veilml.models.trees.auto_bits`'
        if hasattr(auto_bits, "AGREEMENT_TOLERANCE")
        else f" against the float model, tolerance {auto_bits.TOLERANCE['classification']} accuracy, "
        f"{auto_bits.TOLERANCE['regression']} R²; `veilml.models.trees.auto_bits`"
    )
    import veilml

    versions.insert(0, f"veilml {veilml.__version__}")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    if previous:
        command = previous["command"] + " + " + command
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    for name, family in FAMILIES.items():
        if args.only and _stem(name) not in args.only:
            continue
        for dataset in DATASETS[family.task]:
            if (args.datasets and dataset not in args.datasets) or (name, dataset) in done:
                continue
            start = time.perf_counter()
            try:
                row = measure(name, dataset)
            except Exception as error:  # a failing family is a row of the table, not the end of it
                row = {
                    "estimator": name,
                    "family": _stem(name),
                    "task": family.task,
                    "dataset": dataset,
                    "error": f"{type(error).__name__}: {error}",
                }
            elapsed += time.perf_counter() - start
            rows.append(row)
            summary = row.get("error") or (
                f"float {row['float_metric']:.3f} auto {row['metric_auto']:.3f} ({row['n_bits_']}/{row['leaf_bits_']}) "
                f"6-bit {row['metric_6']:.3f} sim=dis {row['simulate_rows_equal']}/{row['n_test']} PBS {row['pbs_count']} "
                f"[{row['total_s']:.0f}s]"
            )
            print(f"[tree_families] {name} on {dataset}: {summary}", file=sys.stderr, flush=True)
            order = {(n, d): i for i, (n, d) in enumerate((n, d) for n, f in FAMILIES.items() for d in DATASETS[f.task])}
            rows.sort(key=lambda r: order.get((r["estimator"], r["dataset"]), len(order)))
            record = {
                "command": command,
                "machine": machine,
                "versions": versions,
                "source": source,
                "auto_bits_rule": auto_bits_rule,
                "total_time_s": elapsed,
                "tolerance": TOLERANCE,
                "rows": rows,
            }
            JSON_PATH.write_text(json.dumps(record, indent=2) + "\n")
    record = json.loads(JSON_PATH.read_text())
    MD_PATH.write_text(render(record))
    print(MD_PATH.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
