"""MkDocs hook: the committed benchmark results become pages of the site, at ``benchmarks/results/<name>.md``.

The Benchmarks page and the guides quote figures from ``benchmarks/results/*.md`` and link the files they quote;
the files live outside ``docs/``, so without this hook ``mkdocs build --strict`` would refuse those links.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config: Any) -> Files:
    """Add every ``benchmarks/results/*.md`` to the site's files, read from where it is committed."""
    for path in sorted(RESULTS.glob("*.md")):
        files.append(File.generated(config, f"benchmarks/results/{path.name}", abs_src_path=str(path)))
    return files
