"""``veilml predict URL``: score a table against a model served by ``veilml serve``, encrypted end to end.

The rows are read here, encrypted here under keys made here, and only ciphertexts go to the server
(:class:`~veilml.serving.remote_model.RemoteModel`); tables of 128 rows or more take the batched path when the
server offers it (``--fhe-path`` forces one), with a progress bar over its batches::

    veilml predict http://server:8000 --input customers.csv --out scores.csv --proba --fingerprint FP
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from veilml.cli.common import CommandError, check_key_dir, one_line
from veilml.cli.tables import align_columns, checked_names, read_table

__all__ = ["add_predict_command"]


def _check_url(url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as error:
        raise CommandError(f"{url!r} is not a URL ({error}); give the server's base URL, e.g. http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"{url!r} is not an http(s) URL; give the server's base URL, e.g. http://127.0.0.1:8000")


def _predict(args: argparse.Namespace) -> int:
    _check_url(args.url)
    if args.key_dir:
        check_key_dir(args.key_dir, missing=None)
    token = _read_token(args.access_token_file) if args.access_token_file else None
    table = read_table(args.input, "--input", header=args.header)
    import numpy as np

    from veilml.serving.remote_model import RemoteModel, RemoteModelError

    try:
        with RemoteModel(
            args.url,
            key_dir=args.key_dir,
            access_token=token,
            expected_fingerprint=args.fingerprint,
            trusted_key=args.trusted_key,
            progress=None if args.progress == "auto" else args.progress == "on",
        ) as model:
            rows = align_columns(table, model.client.codec.feature_names, model.client.n_features, args.input, "predict")
            with checked_names():
                out = (
                    model.predict_proba(rows, fhe_path=args.fhe_path)
                    if args.proba
                    else model.predict(rows, fhe_path=args.fhe_path)
                )
    except (RemoteModelError, ValueError) as error:
        raise CommandError(one_line(error)) from None
    out = np.asarray(out)
    target: Any = sys.stdout if args.out == "-" else args.out
    np.savetxt(target, out.reshape(len(out), -1), delimiter=",", fmt="%.10g")
    if args.out != "-":
        print(f"veilml predict: {len(out)} rows scored encrypted, written to {args.out}", file=sys.stderr)
    return 0


def _read_token(path: str) -> str:
    """The access token in a file of mode 0600 that is this user's (the first line that is not a comment; its last
    field, so that a server's ``NAME TOKEN`` line works too)."""
    import os
    import stat

    try:
        info = os.stat(path)
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.getuid():
            raise CommandError(f"{path} must be yours and of mode 0600 (chmod 600 {path}): it holds an access token")
        lines = [line.split() for line in open(path, encoding="utf-8").read().splitlines()]
    except OSError as error:
        raise CommandError(f"cannot read the access token from {path}: {error}") from None
    tokens = [fields[-1] for fields in lines if fields and not fields[0].startswith("#")]
    if not tokens:
        raise CommandError(f"{path} holds no access token")
    return tokens[0]


def add_predict_command(commands: Any, formatter_class: Any, wanted: Any = None) -> None:
    """Register ``veilml predict`` on the ``veilml`` sub-command parser (its arguments where ``wanted`` names it or
    is None)."""
    from veilml.cli.arguments import ROWS_HELP, header_arg, trusted_key_arg

    help_text = "score rows against a served model (veilml serve), encrypted end to end"
    p = commands.add_parser("predict", help=help_text, description=help_text, formatter_class=formatter_class)
    p.set_defaults(handler=_predict)
    if wanted is not None and "predict" not in wanted:
        return
    p.add_argument("url", help="the server's base URL")
    p.add_argument("--input", required=True, help=f"{ROWS_HELP} ('-': a CSV on stdin)")
    header_arg(p)
    p.add_argument("--out", default="-", help="CSV of labels / values (or probabilities with --proba); '-': stdout")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    p.add_argument(
        "--fhe-path",
        choices=("auto", "tfhe", "batch"),
        default="auto",
        help="auto: the batched path for 128 rows or more when the server has it, else the TFHE path",
    )
    p.add_argument("--fingerprint", help="the client bundle fingerprint veilml serve printed: any other is refused")
    trusted_key_arg(p)
    p.add_argument("--key-dir", help="where to keep this client's keys (default: in memory, made for this run)")
    p.add_argument("--access-token-file", help="a 0600 file with the server's access token")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="a progress bar over batches")
