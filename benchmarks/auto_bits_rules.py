"""Why ``n_bits="auto"`` misses the float metric on some test rows: rules compared on one grid.

    .venv/bin/python benchmarks/auto_bits_rules.py            # measure (~25 min on 2 cores), then report
    .venv/bin/python benchmarks/auto_bits_rules.py --report   # report from benchmarks/results/auto_bits_rules.json

For every estimator and data set of ``docs/tree_families.md`` (same split, hyper-parameters and
cross-validation folds as ``auto_bits``), the 3-fold CV metric and the test metric of the
``disable`` model at every input precision 2..8 (leaf bits 8) and every (input, leaf) pair 2..8.
Then each selection rule is replayed on the CV figures and judged on the test rows, as the table
judges ``n_bits="auto"``: within 1 accuracy point (0.02 of R²) of the float model. Writes
``docs/auto_bits.md``.
"""

from __future__ import annotations

import json
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tree_families as tf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "benchmarks" / "results" / "auto_bits_rules.json"
MD_PATH = ROOT / "docs" / "auto_bits.md"
BITS = list(range(2, 9))
RULES = {
    "first": "the smallest precision whose CV metric is within tolerance (veilml's rule)",
    "stable": "the smallest precision from which every larger one is within tolerance",
    "first+1": "one bit more than 'first'",
    "stable+1": "one bit more than 'stable'",
}


def measure_row(job: tuple[str, str]) -> dict:
    name, dataset = job
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split

    import veilml
    from veilml.models.trees import auto_bits
    from veilml.models.trees.families import FAMILIES

    warnings.simplefilter("ignore")
    family = FAMILIES[name]
    classifier = family.task == "classification"
    metric = accuracy_score if classifier else r2_score
    X, y = tf.DATASETS[family.task][dataset][1]()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=tf.TEST_SIZE, random_state=tf.SEED)
    estimator = getattr(veilml, name)(**tf.HYPER_PARAMETERS[tf._stem(name)])
    folds = auto_bits._folds(y_train, classifier)

    def library_predict(model, X_fit_y, rows):
        predicted = model.predict(rows)
        if classifier and family.module == "xgboost":
            predicted = np.unique(X_fit_y)[np.asarray(predicted, dtype=np.int64)]
        return predicted

    def float_metric(fit, held, rows, targets):
        model = estimator._new_library_model().fit(X_train[fit], estimator._library_targets(y_train[fit]))
        return metric(targets, library_predict(model, y_train[fit], rows))

    everything = np.arange(len(y_train))
    record = {
        "estimator": name,
        "dataset": dataset,
        "float_test": float(float_metric(everything, None, X_test, y_test)),
        "float_cv": float(np.mean([float_metric(f, h, X_train[h], y_train[h]) for f, h in folds])),
        "cv": {},
        "test": {},
    }
    for n_bits in BITS:
        for leaf_bits in BITS:
            key = f"{n_bits}/{leaf_bits}"
            candidate = clone(estimator).set_params(n_bits=n_bits, leaf_bits=leaf_bits)
            record["cv"][key] = float(
                np.mean([metric(y_train[h], clone(candidate).fit(X_train[f], y_train[f]).predict(X_train[h])) for f, h in folds])
            )
            record["test"][key] = float(metric(y_test, clone(candidate).fit(X_train, y_train).predict(X_test)))
    print(f"[auto_bits_rules] {name} on {dataset}", flush=True)
    return record


def pick(cv: dict[int, float], target: float, rule: str) -> int:
    if rule.startswith("first"):
        chosen = next((b for b in BITS if cv[b] >= target), BITS[-1])
    else:
        chosen = BITS[-1]
        for b in reversed(BITS):
            if cv[b] < target:
                break
            chosen = b
    return min(chosen + rule.endswith("+1"), BITS[-1])


def replay(rows: list[dict], rule: str, tolerance_scale: float) -> tuple[int, float, list[str]]:
    within, bits, misses = 0, 0.0, []
    for r in rows:
        classifier = "Classifier" in r["estimator"]
        target = r["float_cv"] - (0.005 if classifier else 0.01) * tolerance_scale
        n_bits = pick({b: r["cv"][f"{b}/8"] for b in BITS}, target, rule)
        leaf_bits = pick({b: r["cv"][f"{n_bits}/{b}"] for b in BITS}, target, rule)
        loss = r["float_test"] - r["test"][f"{n_bits}/{leaf_bits}"]
        ok = loss <= (0.01 if classifier else 0.02) + 1e-12
        within, bits = within + ok, bits + n_bits
        if not ok:
            misses.append(f"{r['estimator']} on {r['dataset']} ({n_bits}/{leaf_bits} bits): {-loss:+.3f}")
    return within, bits / len(rows), misses


def report(rows: list[dict]) -> str:
    lines = [
        '# `n_bits="auto"`: why some rows miss the float metric',
        "",
        f"Made by `python benchmarks/auto_bits_rules.py` from `benchmarks/results/auto_bits_rules.json` ({len(rows)} rows: "
        "the estimators and data sets of `docs/tree_families.md`, same split, hyper-parameters and folds).",
        "",
        "Each rule is replayed on the 3-fold cross-validated metrics of the training rows, then judged on the test rows "
        "as `docs/tree_families.md` judges it (within 1 accuracy point, 0.02 of R², of the float model). Tolerance x1 is "
        "`auto_bits.TOLERANCE` (0.005 accuracy, 0.01 R²); x0 asks the CV metric to reach the float model's.",
        "",
        "| rule | tolerance | rows within | mean input bits |",
        "|---|---|---|---|",
    ]
    for scale in (1.0, 0.0):
        for rule in RULES:
            within, mean_bits, _ = replay(rows, rule, scale)
            lines.append(f"| {rule} | x{scale:g} | {within} of {len(rows)} | {mean_bits:.2f} |")
    ceiling = [r for r in rows if r["test"]["8/8"] < r["float_test"] - (0.01 if "Classifier" in r["estimator"] else 0.02) - 1e-12]
    lines += [
        "",
        "Rules: " + "; ".join(f"**{k}**: {v}" for k, v in RULES.items()) + ".",
        "",
        f"**Even at 8 input and 8 leaf bits, {len(ceiling)} of {len(rows)} rows miss**: "
        + "; ".join(f"{r['estimator']} on {r['dataset']} {r['test']['8/8'] - r['float_test']:+.3f}" for r in ceiling)
        + ". These models are trained on the codes, so they are not the float model rounded: they are other models, and "
        "on test sets of 45-150 rows (one wine row is 2.2 points) the difference between two fits is as large as the "
        "tolerance. No selection rule on the training rows removes that variance; the rules that add bits trade a few "
        "misses for larger circuits. veilml keeps 'first' at the documented tolerance: the smallest circuits, with the "
        "misses listed in `docs/tree_families.md`. A model trained in float and imported with `from_fitted(model, X, "
        "n_bits=8)` reproduces the float model's predictions on at least 99 % of test rows (tests/test_tree_ensembles.py).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    if "--report" not in sys.argv:
        from veilml.models.trees.families import FAMILIES

        jobs = [(name, dataset) for name, family in FAMILIES.items() for dataset in tf.DATASETS[family.task]]
        with ProcessPoolExecutor(2) as pool:
            rows = list(pool.map(measure_row, jobs))
        JSON_PATH.write_text(json.dumps({"command": "python benchmarks/auto_bits_rules.py", "rows": rows}, indent=1) + "\n")
    rows = json.loads(JSON_PATH.read_text())["rows"]
    MD_PATH.write_text(report(rows))
    print(MD_PATH.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
