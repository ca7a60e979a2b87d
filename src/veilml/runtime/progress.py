"""Progress bars and timing logs of the long steps: compile, keygen, encrypted runs, the ``n_bits="auto"`` search.

Bars are ``tqdm.auto``'s (a widget in a notebook, text on a terminal), on stderr. ``progress`` is
``True`` (always), ``False`` (never) or ``None`` (auto: on a terminal or in a Jupyter kernel, not when
stderr is a file or a pipe, as under a batch job or pytest). Every step also logs one INFO line with
its duration to the ``"veilml"`` logger's children (``veilml.runtime``, ``veilml.trees``); veilml
configures no handler: ``logging.basicConfig(level=logging.INFO)`` shows them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar", "show_progress", "timed_step"]


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal but a bar is shown)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half imported: no notebook we can draw in
        return False
    return getattr(shell, "kernel", None) is not None


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress`` itself, or for ``None`` whether stderr is a terminal or a notebook's."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return _in_notebook() or bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    progress: bool | None,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    leave: bool = True,
) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` (or of ``total`` steps), drawn when :func:`show_progress` says so."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, disable=not show_progress(progress))


@contextmanager
def timed_step(what: str, logger: logging.Logger, progress: bool | None = None) -> Iterator[dict[str, str]]:
    """A one-step bar while the block runs and an INFO line ``"<what>: <seconds> s[, <note>]"`` once it succeeds.

    The block may put a ``"note"`` (what was done: sizes, the choice made) in the dict it is given.
    """
    details: dict[str, str] = {}
    start = time.perf_counter()
    with progress_bar(progress=progress, desc=what, unit="step", total=1, leave=False) as bar:
        yield details
        bar.update(1)
    seconds = time.perf_counter() - start
    note = details.get("note")
    logger.info("%s: %.2f s%s", what, seconds, f", {note}" if note else "")
