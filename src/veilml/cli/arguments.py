"""The arguments of the tree model commands (:mod:`veilml.cli.model`, :mod:`veilml.cli.predict`): one function a
command, which adds its arguments to its parser. Nothing here imports more than the parser needs."""

from __future__ import annotations

import argparse

from veilml.cli.sources import FORMATS

__all__ = [
    "ROWS_HELP",
    "client_args",
    "compile_args",
    "decrypt_args",
    "encrypt_args",
    "header_arg",
    "keygen_args",
    "n_bits_arg",
    "run_args",
    "serve_args",
    "sign_args",
    "trusted_key_arg",
]

#: what the rows of --data / --input may be
ROWS_HELP = "rows: a .npy file, or a CSV of numbers with an optional header row of column names"
#: --n-bits: the estimators' range
N_BITS = range(2, 13)


def n_bits_arg(text: str) -> int | str:
    """``--n-bits``: an integer from 2 to 12, or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in N_BITS:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a bit width from {N_BITS[0]} to {N_BITS[-1]}, got {text!r}")
    return value


def header_arg(p: argparse.ArgumentParser) -> None:
    """``--header``: the CSV has a header row, even one that reads as numbers."""
    p.add_argument(
        "--header",
        action="store_const",
        const=True,
        help="the CSV's first line is a header of column names (default: a first line of names only is taken as one)",
    )


def compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model file: " + "; ".join(f"{s} {what}" for s, what in FORMATS.items()))
    p.add_argument("--data", required=True, help=f"representative {ROWS_HELP}: the input grid and the compile inputset")
    header_arg(p)
    p.add_argument("--out", required=True, help="the bundle directory to write")
    p.add_argument(
        "--n-bits",
        type=n_bits_arg,
        default=6,
        metavar="{auto,2..12}",
        help="input precision; 'auto': the smallest input and leaf precisions whose clear predictions agree with the "
        "model's own on the --data rows (no labels needed)",
    )
    p.add_argument("--signing-key", help="sign the bundle with this Ed25519 private key (from 'veilml sign --new-key')")


def sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", help="the bundle directory (or one of its sides) to sign")
    p.add_argument("--key", help="the private key file (PEM, mode 0600)")
    p.add_argument("--new-key", metavar="PATH", help="make a key pair: PATH (private, 0600) and PATH.pub (public)")


def trusted_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-key", help="the bundle maker's public key (PEM, from 'veilml sign --new-key'): require their signature"
    )


def client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="the bundle directory (or its client/)")
    p.add_argument("--key-dir", required=True, help="where this client's keys are kept (secret keys 0600)")
    trusted_key_arg(p)


def keygen_args(p: argparse.ArgumentParser) -> None:
    client_args(p)
    p.add_argument("--out", required=True, help="file for the evaluation keys ('-': stdout)")
    p.add_argument("--force", action="store_true", help="make new keys even if key-dir has some")


def encrypt_args(p: argparse.ArgumentParser) -> None:
    client_args(p)
    p.add_argument("--input", required=True, help=f"{ROWS_HELP} ('-': a CSV on stdin)")
    header_arg(p)
    p.add_argument("--out", required=True, help="file for the ciphertext batch ('-': stdout)")


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="the bundle directory (or its server/)")
    p.add_argument("--keys", required=True, help="the client's evaluation keys (from veilml keygen)")
    p.add_argument("--input", required=True, help="the ciphertext batch ('-': stdin)")
    p.add_argument("--out", required=True, help="file for the result batch ('-': stdout)")
    trusted_key_arg(p)


def decrypt_args(p: argparse.ArgumentParser) -> None:
    client_args(p)
    p.add_argument("--input", required=True, help="the result batch ('-': stdin)")
    p.add_argument("--out", default="-", help="CSV file for the predictions ('-': stdout)")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")


def serve_args(p: argparse.ArgumentParser) -> None:
    from veilml.serving.limits import SERVE_LIMITS, add_limit_arguments

    p.add_argument("bundle", help="the bundle directory")
    p.add_argument(
        "--state",
        help="directory for registered evaluation keys, kept across restarts (made with mode 0700; default: the "
        "per-user state directory's veilml/serve, e.g. ~/.local/state/veilml/serve or $XDG_STATE_HOME/veilml/serve)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--access-token-file",
        help="a file (mode 0600) of access tokens, one per line as 'NAME TOKEN' (or just 'TOKEN'); every request but "
        "/health must present one, and quotas and fair shares are per token",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    trusted_key_arg(p)
    add_limit_arguments(p, SERVE_LIMITS, aliases={"--max-key-mb": "--max-key-store-mb"})
