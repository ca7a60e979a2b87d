"""The tables the commands read: a ``.npy`` file or a CSV of numbers, with or without a header row.

A CSV's first line is a header when every field in it is a name (not a number), or when the command is
given ``--header`` (for names that read as numbers, like ``0,1,2``). A first line that mixes names and
numbers is refused: it is more likely a broken row than a header, and dropping it would lose a row.
Header names are checked against the model's own column names (``feature_names_in_``) where the model
has them: columns in another order are put in the model's order, missing or unknown ones refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from veilml.cli.common import CommandError

__all__ = ["Table", "align_columns", "checked_names", "read_table"]

_ROWS_HINT = "give a .npy file of shape (rows, features) or a CSV of numbers (one header row of column names allowed)"


class Table(NamedTuple):
    """Float rows (n_rows, n_columns) and the column names of the CSV's header (None without one)."""

    rows: Any
    names: tuple[str, ...] | None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheets) is dropped
    except FileNotFoundError:
        raise CommandError(f"{what} {path} does not exist; {_ROWS_HINT}") from None
    except IsADirectoryError:
        raise CommandError(f"{what} {path} is a directory; {_ROWS_HINT}") from None
    except PermissionError:
        raise CommandError(f"{what} {path} cannot be read (permission denied); check its mode, or run as its owner") from None
    except UnicodeDecodeError:
        raise CommandError(f"{what} {path} is not a text file; {_ROWS_HINT}") from None


def _split_header(text: str, path: str, header: bool | None) -> tuple[tuple[str, ...] | None, str]:
    """The header's names (or None) and the text of the rows below it."""
    first, _, rest = text.lstrip("\r\n").partition("\n")
    fields = [field.strip() for field in next(csv.reader([first]), [])]
    numbers = [_is_number(field) for field in fields]
    if header is None:
        if all(numbers):
            return None, text
        if any(numbers):
            raise CommandError(
                f"the first line of {path} mixes names and numbers ({first[:80]!r}): if it is a header of column "
                "names, pass --header; if it is a row, fix its values"
            )
    names = tuple(fields)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates or "" in names:
        problem = f"repeats {', '.join(duplicates[:5])}" if duplicates else "has an empty name"
        raise CommandError(f"the header of {path} {problem}; give each column one name of its own")
    return names, rest


def _read_csv(path: str, what: str, header: bool | None) -> Table:
    import numpy as np

    names, body = _split_header(_read_text(path, what), path, header)
    if not body.strip():
        raise CommandError(f"{path} has no rows{' below its header' if names else ''}; {_ROWS_HINT}")
    try:
        rows = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2, quotechar='"')
    except ValueError as error:
        reason = str(error).split("; use `usecols`")[0].rstrip(".")
        below = " (counted below the header)" if names else ""
        raise CommandError(f"cannot read rows from {path}: {reason}{below}; {_ROWS_HINT}") from None
    if names is not None and len(names) != rows.shape[1]:
        raise CommandError(
            f"the header of {path} names {len(names)} columns but its rows have {rows.shape[1]}; give one name per column"
        )
    return Table(rows, names)


def _read_npy(path: str, what: str) -> Table:
    import numpy as np

    try:
        rows = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CommandError(f"{what} {path} does not exist; {_ROWS_HINT}") from None
    except (OSError, ValueError, EOFError) as error:  # not .npy, truncated, or objects (which need pickle)
        raise CommandError(f"cannot read {path} as a .npy array ({error}); {_ROWS_HINT}") from None
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.dtype.kind not in "biuf":
        shape = getattr(rows, "shape", "?")
        raise CommandError(f"{path} holds an array of shape {shape} and dtype {getattr(rows, 'dtype', '?')}; {_ROWS_HINT}")
    return Table(rows.astype(np.float64, copy=False), None)


def read_table(path: str, what: str, *, header: bool | None = None) -> Table:
    """The rows of ``path`` (``-``: a CSV on stdin), named ``what`` (the flag) in messages.

    ``header``: None detects a header row (every field a name), True takes the first line as one.
    """
    if path.endswith(".npy"):
        if header:
            raise CommandError(f"--header is for CSV files; {path} is a .npy array (it has no column names)")
        return _read_npy(path, what)
    return _read_csv(path, what, header)


def align_columns(table: Table, expected: Any, n_features: int, path: str, command: str) -> Any:
    """The rows of ``table`` with their columns in the order of ``expected`` (the model's column names, or
    None). Without a header, or without names in the model, the columns are taken in their order."""
    if table.names is None or expected is None:
        if table.rows.shape[1] != n_features:
            raise CommandError(
                f"{path} has {table.rows.shape[1]} columns but the model takes {n_features} features; give one "
                "column per feature, in the order the model was trained on"
            )
    if table.names is None:
        return table.rows
    if expected is None:
        print(
            f"veilml {command}: {path}: the model records no column names, so the header is skipped and the "
            "columns are taken in their order",
            file=sys.stderr,
        )
        return table.rows
    expected = tuple(str(name) for name in expected)
    if table.names == expected:
        return table.rows
    missing = [name for name in expected if name not in table.names]
    unknown = [name for name in table.names if name not in expected]
    if missing or unknown:
        parts = [f"lacks {', '.join(missing[:8])}{' …' * (len(missing) > 8)}"] if missing else []
        parts += [f"has {', '.join(unknown[:8])}{' …' * (len(unknown) > 8)} that the model does not know"] if unknown else []
        raise CommandError(
            f"the columns of {path} are not the model's: it {' and '.join(parts)}; give the columns the model was "
            f"trained on ({', '.join(expected[:8])}{' …' * (len(expected) > 8)})"
        )
    print(f"veilml {command}: {path}: columns put in the model's order by name", file=sys.stderr)
    return table.rows[:, [table.names.index(name) for name in expected]]


@contextlib.contextmanager
def checked_names() -> Iterator[None]:
    """Silence scikit-learn's warning that an array has no column names: the commands pass arrays whose columns
    :func:`align_columns` has checked or ordered already (or that had no header to check)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        yield
