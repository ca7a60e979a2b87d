"""The notebooks in ``notebooks/`` run top to bottom, and are stored executed.

Each notebook asserts what it prints (agreement between FHE modes, accuracies, losses), so running
it is its test: ``test_notebook_runs_without_errors`` executes it with nbclient in a fresh
``python3`` kernel, from the notebooks folder, as a reader would, and discards the executed copy; nbclient
itself runs in a child process (``notebook_child.py``), away from pytest's.

The committed files keep their outputs and plots, so that a reader sees the results without
running anything; ``test_notebook_is_stored_executed`` checks that they are complete, in order,
free of errors and small. Re-execute and save them with ``python scripts/run_notebooks.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from requires import require

nbformat = require("nbformat", "test")
require("nbclient", "test")
require("ipykernel", "test")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
CHILD_TIMEOUT_S = 1800  # a whole notebook
CHILD = Path(__file__).resolve().parent / "notebook_child.py"
MAX_NOTEBOOK_BYTES = 150 * 1024
# A code cell whose source contains one of these shows something, so it must have stored outputs.
SHOWS = ("print(", "plt.show()", "display(")


def _error_outputs(notebook) -> list[str]:
    """'cell N: Name: message' for every error output left in the notebook."""
    errors = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
    return errors


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebook found in {NOTEBOOKS_DIR}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path: Path) -> None:
    stored = path.read_bytes()
    # in a child process (tests/notebook_child.py): nbclient's kernel sockets and threads never live in pytest's
    done = subprocess.run(
        [sys.executable, str(CHILD), str(path), str(NOTEBOOKS_DIR), str(CELL_TIMEOUT_S)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"{path.name}: the notebook runner died ({done.returncode}):\n{done.stderr[-4000:]}"
    verdict = json.loads(lines[-1])
    if verdict["failed"]:
        pytest.fail(f"{path.name} failed:\n{verdict['failed']}", pytrace=False)
    assert not verdict["errors"], f"{path.name} has cells that raised:\n" + "\n".join(verdict["errors"])
    assert path.read_bytes() == stored, f"running {path.name} must not change the committed file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed(path: Path) -> None:
    """Committed with outputs: every code cell ran, in order, without an error, and the file is small."""
    size = path.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, (
        f"{path.name} is {size / 1024:.0f} KiB (limit {MAX_NOTEBOOK_BYTES // 1024} KiB): shrink its plots "
        "(figsize, dpi) or outputs"
    )
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    rerun = "re-execute and save it with `python scripts/run_notebooks.py`"
    code = [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cell"

    not_run = [index for index, cell in code if cell.get("execution_count") is None]
    assert not not_run, f"{path.name}: code cells {not_run} were never executed; {rerun}"
    counts = [cell.execution_count for _, cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)} in order (cells run out of order, "
        f"or a partial run); {rerun}"
    )
    silent = [index for index, cell in code if any(s in cell.source for s in SHOWS) and not cell.get("outputs")]
    assert not silent, f"{path.name}: code cells {silent} print or plot but have no stored output; {rerun}"

    errors = _error_outputs(notebook)
    assert not errors, f"{path.name} is stored with errors:\n" + "\n".join(errors)
    stderr = [
        index
        for index, cell in code
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stderr"
    ]
    assert not stderr, (
        f"{path.name}: code cells {sorted(set(stderr))} are stored with stderr output (a warning, a progress bar); "
        "silence it, or capture and print what the reader should see"
    )


#: notebooks whose encrypted runs show veilml's progress bar (a tqdm.auto widget), and the call that draws it
BARS = {"01_encrypted_decision_tree.ipynb": 'fhe="execute"', "05_whole_tables.ipynb": 'fhe="execute"'}


@pytest.mark.parametrize("name", sorted(BARS))
def test_long_steps_show_a_progress_bar_in_the_stored_notebook(name: str) -> None:
    """A reader of the executed notebook sees a bar where encryption runs (progress=None: on in a notebook)."""
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and BARS[name] in cell.source]
    assert cells, f"{name} no longer calls {BARS[name]}"
    bars = [
        output
        for cell in cells
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert bars, f"{name}: no progress bar where {BARS[name]} runs; re-execute it with `python scripts/run_notebooks.py`"
