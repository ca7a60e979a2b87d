"""Run one notebook with nbclient in this process, for ``test_notebooks.py``; the verdict goes to stdout as JSON.

The test runs this file in a child process rather than nbclient in pytest's own process: nbclient talks to
its kernel through zmq sockets and threads, and tearing those down inside the long-lived test process is
native code that a rare crash there would take the whole test run with it. The child leaves with
``os._exit`` once it has written its verdict, so no teardown of that state runs at all.

    python tests/notebook_child.py NOTEBOOK WORKDIR TIMEOUT_S
"""

from __future__ import annotations

import json
import os
import sys


def run(path: str, workdir: str, timeout: int) -> dict:
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": workdir}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        return {"failed": str(error), "errors": []}
    errors = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
    return {"failed": None, "errors": errors}


if __name__ == "__main__":
    try:
        verdict = run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    except Exception as error:  # noqa: BLE001 - any failure is reported to the test, which fails with it
        verdict = {"failed": f"{type(error).__name__}: {error}", "errors": []}
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    os._exit(0)
