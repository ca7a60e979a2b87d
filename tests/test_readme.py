"""The README's figures are what the code computes: the demo's output, the quickstart and the manual's tables.

The demo runs as a reader runs it (``python -m veilml.cli.demo``, real keys, real encryption) and its
printed figures are compared with figures this test computes itself from the library; the
README's copy of the output is then compared with those figures. The README's quickstart runs as pasted.
The tree table (docs/guides/trees.md) and the Concrete-ML ratios (docs/benchmarks.md), which moved from the
README to the manual, are compared with the compiled circuit and the committed benchmark.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier as FloatTree

from veilml.quantization import QuantizationRangeWarning

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TREES_GUIDE = (ROOT / "docs" / "guides" / "trees.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()
ROWS = 2  # encrypted rows the demo runs here (the README shows 5)


def _readme_demo_block() -> str:
    """The README's copy of the demo output: the code block after 'On a 2-core machine'."""
    match = re.search(r"On a 2-core machine:\n\n```\n(.*?)```", README, re.S)
    assert match, "README.md lost the demo's output block"
    return match.group(1)


def _figures(text: str) -> dict[str, str]:
    """The deterministic figures of the demo's summary lines (accuracies, agreement, PBS line)."""
    figures = {}
    for name in ("float scikit-learn tree", "veilml fhe='disable'", "veilml fhe='simulate'", "veilml encrypted execute"):
        match = re.search(rf"accuracy, {re.escape(name)}\s*: ([0-9.]+) \((\d+) rows\)", text)
        assert match, f"no accuracy line for {name!r} in:\n{text}"
        figures[name] = match.group(1)
        figures[name + " rows"] = match.group(2)
    agreement = re.search(r"encrypted == clear on (\d+)/(\d+) rows", text)
    pbs = re.search(r"PBS per row: (\d+) \(max (\d+) bits\), complexity ([0-9.e+]+)", text)
    assert agreement and pbs, f"the demo's agreement or PBS line is missing in:\n{text}"
    figures["agreement"], figures["agreement rows"] = agreement.groups()
    figures["pbs"], figures["max bits"], figures["complexity"] = pbs.groups()
    return figures


@pytest.fixture(scope="module")
def demo_output() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "veilml.cli.demo", "--rows", str(ROWS)], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, f"the demo failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def computed(cancer, compiled_cancer_tree) -> dict[str, str]:
    """The demo's figures computed here, from the library, with the demo's data and settings."""
    X_train, X_test, y_train, y_test = cancer
    model = compiled_cancer_tree  # depth 5, 6 bits, random_state 0: the demo's model
    float_tree = FloatTree(max_depth=5, random_state=0).fit(X_train, y_train)
    report = model.report_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationRangeWarning)  # held-out rows beyond the training range
        disable = model.predict(X_test, fhe="disable")
        simulate = model.predict(X_test, fhe="simulate")
    return {
        "float scikit-learn tree": f"{float_tree.score(X_test, y_test):.4f}",
        "veilml fhe='disable'": f"{np.mean(disable == y_test):.4f}",
        "veilml fhe='simulate'": f"{np.mean(simulate == y_test):.4f}",
        "pbs": str(report.pbs_count),
        "max bits": str(report.max_bit_width),
        "complexity": f"{report.complexity:.3g}",
        "disable first rows": f"{np.mean(disable[:ROWS] == y_test[:ROWS]):.4f}",
        "n_test": str(len(X_test)),
    }


@pytest.mark.execute
def test_demo_prints_the_figures_the_library_computes(demo_output, computed):
    printed = _figures(demo_output)
    for name in ("float scikit-learn tree", "veilml fhe='disable'", "veilml fhe='simulate'", "pbs", "max bits", "complexity"):
        assert printed[name] == computed[name], f"{name}: the demo printed {printed[name]}, the library gives {computed[name]}"
    assert printed["veilml fhe='disable' rows"] == computed["n_test"]
    # encrypted rows are the clear rows: execute accuracy is disable's on the same rows
    assert printed["agreement"] == printed["agreement rows"] == str(ROWS)
    assert printed["veilml encrypted execute"] == computed["disable first rows"]
    assert printed["veilml encrypted execute rows"] == str(ROWS)


@pytest.mark.execute
def test_readme_shows_the_demo_output(demo_output, computed):
    """The README's copy agrees with this run on everything deterministic (not the timings)."""
    shown = _figures(_readme_demo_block())
    printed = _figures(demo_output)
    for name in ("float scikit-learn tree", "veilml fhe='disable'", "veilml fhe='simulate'", "pbs", "max bits", "complexity"):
        assert shown[name] == printed[name], f"README shows {name} = {shown[name]}, the demo prints {printed[name]}"
    assert shown["agreement"] == shown["agreement rows"] == shown["veilml encrypted execute rows"]


def test_docs_tree_table_is_the_compiled_circuit_and_the_benchmark(compiled_cancer_tree):
    """The 'How a tree is compiled' table: veilml's row from the circuit, Concrete-ML's from its committed run."""
    rows = dict(re.findall(r"^\| (Concrete-ML [0-9.]+|veilml) \| (.+?) \|$", TREES_GUIDE, re.M))
    assert set(rows) == {"veilml", "Concrete-ML 1.9"}, f"docs/guides/trees.md's tree table rows changed: {rows}"
    report = compiled_cancer_tree.report_
    pbs, complexity = (cell.strip() for cell in rows["veilml"].split("|"))
    assert pbs == f"{report.pbs_count} ({report.max_bit_width}-bit)"
    assert complexity == f"{report.complexity:.1e}".replace("e+0", "e")
    theirs = json.loads((ROOT / "benchmarks" / "results" / "concrete_ml_dt_cancer.json").read_text())
    assert theirs["versions"]["concrete-ml"].startswith("1.9")
    their_pbs, their_complexity = (cell.strip() for cell in rows["Concrete-ML 1.9"].split("|"))
    assert their_pbs == str(theirs["pbs_count"])
    assert their_complexity == f"{theirs['complexity']:.1e}".replace("e+0", "e")


#: docs/benchmarks.md table (its first header cell) -> (ratios of trees.json it shows, their keys, in column order)
BENCHMARK_TABLES = {
    "case": (
        "ratios_concrete_ml_over_veilml",
        (
            "pbs_count",
            "complexity",
            "evaluation_key_serialized_bytes",
            "bytes_up_per_row",
            "bytes_down_per_row",
            "execute_latency_median_s",
            "batch_throughput_rows_per_s",
        ),
    ),
    "case, at Concrete-ML's p_error": (
        "ratios_at_concrete_ml_p_error",
        ("complexity", "evaluation_key_serialized_bytes", "execute_latency_median_s", "batch_throughput_rows_per_s"),
    ),
    "case, encoding='auto'": (
        "ratios_auto",
        ("pbs_count", "complexity", "bytes_up_per_row", "execute_latency_median_s", "batch_throughput_rows_per_s"),
    ),
}


def _benchmark_table(first_header_cell: str) -> dict[str, list[str]]:
    """The rows (first cell -> other cells) of the docs/benchmarks.md table whose header starts with that cell."""
    match = re.search(rf"^\| {re.escape(first_header_cell)} \|.*\n\|[-| ]+\|\n((?:\|.*\|\n)+)", BENCHMARKS, re.M)
    assert match, f"docs/benchmarks.md lost the benchmark table headed {first_header_cell!r}"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in match.group(1).splitlines()]
    return {row[0]: row[1:] for row in rows}


def test_docs_ensemble_table_is_the_committed_benchmark():
    """The manual's Concrete-ML / veilml ratios are benchmarks/results/trees.json's, rounded, for every case."""
    results = json.loads((ROOT / "benchmarks" / "results" / "trees.json").read_text())
    assert results["complete"], "benchmarks/results/trees.json is from an unfinished run"
    cases = results["cases"]
    assert len(cases) >= 8, f"the committed benchmark has {len(cases)} cases: {sorted(cases)}"
    for header, (ratios, keys) in BENCHMARK_TABLES.items():
        table = _benchmark_table(header)
        assert set(table) == {entry["title"] for entry in cases.values()}, f"{header!r}: docs/benchmarks.md rows {sorted(table)}"
        for entry in cases.values():
            shown = [float(cell.rstrip("x")) for cell in table[entry["title"]]]
            measured = entry[ratios]
            assert shown == [round(measured[key], 1) for key in keys], f"{entry['title']}: docs {shown}, benchmark {measured}"


def _readme_quickstart() -> str:
    """The README's quickstart: the python block between its snippet markers (docs/getting-started.md includes it)."""
    match = re.search(r"--8<-- \[start:quickstart\] -->\n```python\n(.*?)```\n<!-- --8<-- \[end:quickstart\]", README, re.S)
    assert match, "README.md lost its quickstart (a python block between the quickstart snippet markers)"
    return match.group(1)


def test_readme_quickstart_defines_every_name_it_uses():
    """Pasted alone into a fresh interpreter, the quickstart needs no name from elsewhere (no X_train from nowhere)."""
    tree = ast.parse(_readme_quickstart())
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert not used - defined, f"the README's quickstart uses names it never defines: {sorted(used - defined)}"
    modes = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)} & {"disable", "simulate", "execute"}
    assert modes == {"disable", "simulate", "execute"}, f"the quickstart shows the fhe modes {sorted(modes)}, not all three"


@pytest.mark.execute
def test_readme_quickstart_runs_as_pasted(tmp_path):
    """The quickstart, run as a reader runs it (a fresh interpreter, another folder): real keys, real encryption."""
    script = tmp_path / "quickstart.py"
    script.write_text(_readme_quickstart())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, f"the README's quickstart failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    accuracy = re.search(r"accuracy ([0-9.]+) on (\d+) rows", done.stdout)
    assert accuracy and int(accuracy.group(2)) == 143, f"no accuracy line in:\n{done.stdout}"
    assert float(accuracy.group(1)) > 0.85, f"the quickstart's tree is barely better than chance:\n{done.stdout}"
    assert "simulate == disable: True, execute == disable: True" in done.stdout, done.stdout
