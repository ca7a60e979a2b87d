"""Test metric of every tree family on the six data sets of ``tree_families.py``: the default leaf
quantization (``leaf_bits=None``: where a value leaf stage is compiled, an ensemble's score is an
``n_bits + 1``-bit integer; elsewhere ``n_bits`` per tree) against 6-bit leaves per tree
(``leaf_bits=6``, the default before 2026-12-02), at ``n_bits=6``.

Usage: ``.venv/bin/python benchmarks/leaf_precision.py`` (about 2 minutes on 2 cores; ``fhe="disable"``,
which computes exactly the circuit's integers, so no compilation). Results:
``benchmarks/results/leaf_precision.md``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tree_families import DATASETS, HYPER_PARAMETERS, SEED, TEST_SIZE  # noqa: E402


def main() -> int:
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split

    import veilml

    warnings.simplefilter("ignore")
    lines = [
        "# Leaf precision: an (n_bits + 1)-bit ensemble score against 6-bit leaves per tree",
        "",
        "`python benchmarks/leaf_precision.py`: test metric (accuracy, or R² for regressors) with "
        '`fhe="disable"`, n_bits=6, `train_on="codes"`, the hyper-parameters of `tree_families.py`; '
        "`leaf bits` is the per-tree precision the default chose (`leaf_bits_`).",
        "",
        "| data | family | default | leaf bits (7-bit score where < 6) | leaf_bits=6 | difference |",
        "|---|---|---|---|---|---|",
    ]
    differences: dict[str, list[float]] = {"classification": [], "regression": []}
    scored = 0
    for task, sets in DATASETS.items():
        for dataset, (_, load) in sets.items():
            X, y = load()
            X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SIZE, random_state=SEED)
            metric = accuracy_score if task == "classification" else r2_score
            for stem, hp in HYPER_PARAMETERS.items():
                name = stem + ("Classifier" if task == "classification" else "Regressor")
                extra = {"verbose": -1} if stem == "LGBM" else {}
                default = getattr(veilml, name)(n_bits=6, **hp, **extra).fit(X_train, y_train)
                six = getattr(veilml, name)(n_bits=6, leaf_bits=6, **hp, **extra).fit(X_train, y_train)
                a, b = metric(y_test, default.predict(X_test)), metric(y_test, six.predict(X_test))
                differences[task].append(a - b)
                scored += default.leaf_bits_ < 6
                lines.append(f"| {dataset} | {stem} | {a:.4f} | {default.leaf_bits_} | {b:.4f} | {a - b:+.4f} |")
                print(lines[-1], flush=True)
    lines.append("")
    lines.append(f"- models given the 7-bit score (leaf bits < 6): {scored} of {sum(map(len, differences.values()))}")
    for task, diffs in differences.items():
        lines.append(
            f"- {task}: mean difference {np.mean(diffs):+.4f}, worst {min(diffs):+.4f}, best {max(diffs):+.4f} ({len(diffs)} models)"
        )
    (HERE / "results" / "leaf_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
