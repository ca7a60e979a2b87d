"""What a single decision tree costs, and how long one encrypted row takes, against ``n_bits`` and depth.

    .venv/bin/python benchmarks/cost_vs_bits.py [--depths 2 3 4 5 6] [--bits 2 3 4 5 6 7] [--rows 7] [--render]

For ``veilml.DecisionTreeClassifier(max_depth=d, n_bits=b, random_state=0)`` on scikit-learn's wine
data, split as in ``notebooks/02_tree_ensembles.ipynb`` (30 % test, stratified, seed 0), for every
depth and ``n_bits`` of the grid: ``fit``, the complexity estimated without compiling
(``veilml.models.trees.auto_bits.circuit_cost``), ``compile(X_train)`` and concrete's figures
(``report_``: complexity, PBS, PBS by precision, widest value), the test accuracy with
``fhe="disable"`` (equal to the encrypted model's), then the execute latency: one row run first
(key generation, and the server's first use of the keys: not timed), then ``--rows`` test rows in
one ``predict(..., fhe="execute")`` call, each row timed on its own (encrypt, run, decrypt; the
median is reported, and the process's CPU time per row, all threads) and checked equal to
``fhe="disable"``. The load average is recorded after each point: the timings are only comparable
between runs on an otherwise idle machine.

About 3 minutes on 2 idle cores for the default grid (5 under a load average of 4). Writes
``benchmarks/results/cost_vs_bits.json`` and ``benchmarks/results/cost_vs_bits.md`` (``--output``
names others; ``--render`` rewrites the .md from the .json); notebook 02 plots the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TEST_SIZE, SEED = 0.3, 0


def measure(depth: int, n_bits: int, data: tuple, rows: int) -> dict:
    """One point of the grid: the tree's costs, accuracy and execute latency per row."""
    import veilml
    from veilml.models.trees.auto_bits import circuit_cost

    X_train, X_test, y_train, y_test = data
    start = time.perf_counter()
    model = veilml.DecisionTreeClassifier(max_depth=depth, n_bits=n_bits, random_state=0).fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    estimated = circuit_cost(model)
    start = time.perf_counter()
    model.compile(X_train, progress=False)
    compile_s = time.perf_counter() - start
    report = model.report_
    clear = model.predict(X_test, fhe="disable")

    start = time.perf_counter()
    model.predict(X_test[:1], fhe="execute", progress=False)  # key generation and the keys' first use: not timed
    keygen_and_first_row_s = time.perf_counter() - start
    timed = X_test[1 : 1 + rows]
    start, cpu_start = time.perf_counter(), time.process_time()
    executed = model.predict(timed, fhe="execute", progress=False)
    execute_s, execute_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    latencies = list(model.fhe_model_.last_latencies)  # per row: encrypt, run, decrypt
    return {
        "max_depth": depth,
        "n_bits": n_bits,
        "depth_reached": int(model.model_.get_depth()),
        "leaves": sum(int(tree.is_leaf.sum()) for tree in model.ensemble_.trees),
        "leaf_selection": model.lowering_["leaf selection"],
        "estimated_complexity": float(estimated),
        "complexity": float(report.complexity),
        "pbs_count": int(report.pbs_count),
        "pbs_by_precision": {str(k): v for k, v in sorted(report.pbs_by_precision.items())},
        "max_bit_width": int(report.max_bit_width),
        "input_bytes": int(report.input_bytes),
        "test_accuracy_disable": float(np.mean(clear == y_test)),
        "fit_s": fit_s,
        "compile_s": compile_s,
        "keygen_and_first_row_s": keygen_and_first_row_s,
        "timed_rows": len(timed),
        "row_latencies_s": latencies,
        "median_row_latency_s": statistics.median(latencies),
        "execute_call_s": execute_s,
        "execute_cpu_s_per_row": execute_cpu_s / len(timed),  # this process's CPU time, all its threads
        "execute_equals_disable": bool(np.array_equal(executed, clear[1 : 1 + rows])),
        "load_average_1_5_15_min": list(os.getloadavg()),
    }


def source_line(record: dict) -> str:
    """'commit abc1234, ' (with a mark where src/ had uncommitted changes), or nothing for a record without it."""
    source = record.get("source")
    if not source:
        return ""
    return f"commit {source['commit'][:7]}{' + uncommitted src/ changes' if source['src_uncommitted_changes'] else ''}, "


def write_markdown(record: dict, path: Path) -> str:
    points = record["points"]
    loads = [p["load_average_1_5_15_min"][0] for p in points]
    lines = [
        "# A decision tree's cost and execute latency against n_bits and depth",
        "",
        f"`{record['command']}` on {record['machine']['cpu_count']} cores ({record['machine']['platform']}), "
        f"{source_line(record)}"
        f"{record['total_time_s'] / 60:.1f} min; wine, 30 % stratified test split (seed 0), "
        "`DecisionTreeClassifier(max_depth=d, n_bits=b, random_state=0)`. *estimated*: `circuit_cost` before "
        'compiling; *complexity*, *PBS*: concrete\'s, after `compile`; *accuracy*: `fhe="disable"` on the 54 test rows; '
        f"*latency*: median over {record['rows']} test rows of one row's encrypt, run and decrypt with "
        '`fhe="execute"` (keys generated and first used on another row before); *CPU*: the process\'s CPU time '
        "(all threads) of those rows, per row; *= disable*: the executed rows "
        f'equal `fhe="disable"`. 1-minute load average after each point: {min(loads):.2f} to {max(loads):.2f}.',
        "",
        "| depth | n_bits | depth reached | leaves | PBS (bits: count) | max bits | estimated | complexity | accuracy | latency per row, median (min), ms | CPU per row, ms | = disable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        pbs = ", ".join(f"{k}: {v}" for k, v in p["pbs_by_precision"].items())
        lines.append(
            f"| {p['max_depth']} | {p['n_bits']} | {p['depth_reached']} | {p['leaves']} | {p['pbs_count']} ({pbs}) | "
            f"{p['max_bit_width']} | {p['estimated_complexity']:.3g} | {p['complexity']:.3g} | "
            f"{p['test_accuracy_disable']:.3f} | {p['median_row_latency_s'] * 1e3:.0f} ({min(p['row_latencies_s']) * 1e3:.0f}) | {p['execute_cpu_s_per_row'] * 1e3:.0f} | "
            f"{'yes' if p['execute_equals_disable'] else '**no**'} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7])
    parser.add_argument("--rows", type=int, default=7, help="test rows timed per point (after one untimed row)")
    parser.add_argument("--output", default="cost_vs_bits", help="results/<output>.json and .md")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the stored .json (no run)")
    args = parser.parse_args()
    if args.render:
        record = json.loads((RESULTS / f"{args.output}.json").read_text())
        print(write_markdown(record, RESULTS / f"{args.output}.md"))
        return 0

    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    warnings.simplefilter("ignore")  # test values outside the training range are clipped (QuantizationRangeWarning)
    X, y = load_wine(return_X_y=True)
    data = train_test_split(X, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    RESULTS.mkdir(exist_ok=True)
    run_start = time.perf_counter()
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()  # noqa: E731
    record: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": {
            "commit": git("rev-parse", "HEAD"),
            "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src")),
        },
        "rows": args.rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "load_average_1_5_15_min_at_start": list(os.getloadavg()),
        },
        "points": [],
    }
    for depth in args.depths:
        for n_bits in args.bits:
            point = measure(depth, n_bits, data, args.rows)
            record["points"].append(point)
            print(
                f"depth {depth} n_bits {n_bits}: {point['pbs_count']} PBS, complexity {point['complexity']:.3g} "
                f"(estimated {point['estimated_complexity']:.3g}), accuracy {point['test_accuracy_disable']:.3f}, "
                f"{point['median_row_latency_s'] * 1e3:.0f} ms per row, load {point['load_average_1_5_15_min'][0]:.2f}",
                flush=True,
            )
    record["total_time_s"] = time.perf_counter() - run_start
    record["machine"]["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
    (RESULTS / f"{args.output}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(write_markdown(record, RESULTS / f"{args.output}.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
