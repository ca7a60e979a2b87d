"""Every notebook in ``notebooks/`` runs top to bottom without an error.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, from the notebooks folder,
as a reader would run it. The executed copy is discarded: notebooks are stored without outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from requires import require

nbformat = require("nbformat", "test")
nbclient = require("nbclient", "test")
require("ipykernel", "test")

from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _error_outputs(notebook) -> list[str]:
    """'cell N: Name: message' for every error output left in the executed notebook."""
    errors = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
    return errors


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    errors = _error_outputs(notebook)
    assert not errors, f"{path.name} has cells that raised:\n" + "\n".join(errors)


def test_notebooks_are_stored_without_outputs() -> None:
    """Notebooks are committed clean, so diffs show code and prose only."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        dirty = [
            i
            for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
        ]
        assert not dirty, f"{path.name}: code cells {dirty} have stored outputs; clear them before committing"
