"""Execute the notebooks and save them in place, with their outputs, as they are committed.

    .venv/bin/python scripts/run_notebooks.py                    # every notebook in notebooks/
    .venv/bin/python scripts/run_notebooks.py notebooks/01_*.ipynb

Each notebook runs top to bottom in a fresh ``python3`` kernel, from the notebooks folder, as a
reader would run it (the asserts in its cells are its checks). Only a notebook that ran without an
error is written back. Volatile metadata (cell timings, the kernel's version strings) is not
stored, so re-running changes only what the notebook itself prints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600


def execute(path: Path) -> float:
    """Run ``path`` and write it back executed; return the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    return seconds


def main(argv: list[str]) -> int:
    paths = [Path(arg).resolve() for arg in argv] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    for path in paths:
        seconds = execute(path)
        print(f"{path.name}: executed in {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
