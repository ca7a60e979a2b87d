"""``veilml compile | sign | keygen | encrypt | run | decrypt | serve``: a deployed model from the shell.

Each step reads and writes files (``-`` is stdin / stdout for the binary ones), so they chain::

    veilml sign --new-key maker.key                  # once: maker.key (0600) and maker.key.pub
    veilml compile model.onnx --data train.csv --out bundle --signing-key maker.key
    veilml keygen bundle --key-dir keys --out eval.keys --trusted-key maker.key.pub
    veilml encrypt bundle --key-dir keys --input rows.csv --out - \\
      | veilml run bundle --keys eval.keys --input - --out - \\
      | veilml decrypt bundle --key-dir keys --input -
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from veilml.cli.common import CommandError, read_tokens, run_app, service_modules

__all__ = ["add_model_commands"]


def _read_rows(path: str) -> np.ndarray:
    """Float rows from a .npy file or a CSV (comma-separated, no header; ``-`` is stdin)."""
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    source: Any = sys.stdin if path == "-" else path
    try:
        rows = np.loadtxt(source, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise CommandError(
            f"cannot read rows from {path}: {error}; give a .npy file or a CSV of numbers without header"
        ) from None
    return rows


def _read_bytes(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _write_bytes(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(path).write_bytes(data)


def _compile(args: argparse.Namespace) -> int:
    import veilml
    from veilml.compiler import Configuration

    if not args.model.endswith(".onnx"):
        raise CommandError(
            f"{args.model}: give an ONNX file (TreeEnsembleClassifier / TreeEnsembleRegressor), e.g. written by skl2onnx"
        )
    X = _read_rows(args.data)
    model = veilml.from_onnx(args.model, X=X, n_bits=args.n_bits)
    print(
        f"veilml compile: {type(model).__name__}, {X.shape[1]} features, {args.n_bits} bits: compiling…",
        file=sys.stderr,
        flush=True,
    )
    model.compile(X, Configuration(show_progress=False))
    model.save(args.out)
    print(f"veilml compile: {model.report_}; bundle written to {args.out}", file=sys.stderr)
    if args.signing_key:
        _sign_bundle(args.out, args.signing_key, "compile")
    _print_fingerprint(args.out, "compile")
    return 0


def _print_fingerprint(bundle: str, command: str) -> None:
    from veilml.serving.bundle import client_bundle_fingerprint

    print(
        f"veilml {command}: client bundle fingerprint {client_bundle_fingerprint(bundle)} "
        "(data owners pin it: RemoteModel(..., expected_fingerprint=...))",
        file=sys.stderr,
    )


def _sign_bundle(bundle: str, key: str, command: str) -> None:
    from veilml.runtime.manifest import load_private_key, public_key_id
    from veilml.serving.bundle import sign_bundle

    private = load_private_key(key)
    for path in sign_bundle(bundle, private):
        print(f"veilml {command}: signed {path.parent} (key {public_key_id(private.public_key())[:16]}…)", file=sys.stderr)


def _sign(args: argparse.Namespace) -> int:
    from veilml.runtime.manifest import public_key_id, write_key_pair

    if args.new_key:
        if args.bundle or args.key:
            raise CommandError("--new-key makes a key pair and signs nothing; run 'veilml sign BUNDLE --key KEY' after it")
        private, public = write_key_pair(args.new_key)
        print(f"veilml sign: private key {private} (mode 0600: keep it secret), public key {public}", file=sys.stderr)
        print(f"veilml sign: key id {public_key_id(public)}; give {public} to whoever loads your bundles", file=sys.stderr)
        return 0
    if not (args.bundle and args.key):
        raise CommandError("give a bundle and --key PRIVATE_KEY_FILE, or --new-key PATH to make a key pair")
    _sign_bundle(args.bundle, args.key, "sign")
    _print_fingerprint(args.bundle, "sign")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from veilml.serving.bundle import ModelClient

    return ModelClient(args.bundle, key_dir=args.key_dir, trusted_key=args.trusted_key)


def _keygen(args: argparse.Namespace) -> int:
    client = _client(args)
    client.keygen(force=args.force)
    _write_bytes(args.out, client.evaluation_keys())
    print(f"veilml keygen: key id {client.key_id}; keys in {args.key_dir} (0600), evaluation keys in {args.out}", file=sys.stderr)
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    client = _client(args)
    if not client._fhe.has_keys:
        raise CommandError(
            f"no keys for this model in {args.key_dir}; run 'veilml keygen {args.bundle} --key-dir {args.key_dir}' first"
        )
    _write_bytes(args.out, client.encrypt(_read_rows(args.input)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from veilml.serving.bundle import ModelServer

    server = ModelServer(args.bundle, trusted_key=args.trusted_key)
    key_id = server.register(_read_bytes(args.keys))
    _write_bytes(args.out, server.run(_read_bytes(args.input), key_id))
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    client = _client(args)
    results = _read_bytes(args.input)
    values = client.decrypt_proba(results) if args.proba else client.decrypt(results)
    values = np.asarray(values).reshape(len(values), -1)
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    try:
        for row in values:
            print(",".join(str(v) for v in row.tolist()), file=out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    service_modules("serving")
    from veilml.serving.limits import limits_from_args
    from veilml.serving.model_service import create_model_app

    tokens = read_tokens(args.access_token_file) if args.access_token_file else None
    try:
        limits = limits_from_args(args)
    except ValueError as error:
        raise CommandError(str(error)) from None
    state = Path(args.state).expanduser()
    app = create_model_app(args.bundle, state, limits=limits, access_token=tokens, trusted_key=args.trusted_key)
    print(
        f"veilml serve: model {app.state.fingerprint[:12]}…, {app.state.n_features} features, "
        f"{limits.workers} FHE process(es), {limits.max_rows} rows per request, {limits.run_timeout:g} s run timeout",
        flush=True,
    )
    print(f"veilml serve: keys kept in {state / 'keys'}", flush=True)
    print(
        f"veilml serve: client bundle fingerprint {app.state.bundle_fingerprint} "
        "(give it to data owners: RemoteModel(url, expected_fingerprint=...))",
        flush=True,
    )
    exposed = "" if tokens else " and without an access token (--access-token-file): anyone who reaches it can query the model"
    run_app(
        app,
        "serve",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        exposed=exposed,
        paths="GET /health, GET /batch, GET /docs",
    )
    return 0


def _guarded(handler: Any) -> Any:
    """Turn library errors on user input into one-line command errors."""

    def run(args: argparse.Namespace) -> int:
        from veilml.runtime.envelope import EnvelopeError
        from veilml.runtime.manifest import ArtifactError
        from veilml.runtime.security import InsecureParametersError

        refused = (ArtifactError, EnvelopeError, InsecureParametersError, FileNotFoundError, FileExistsError, PermissionError)
        try:
            return handler(args)
        except (*refused, NotADirectoryError, CommandError) as error:
            print(f"veilml {args.command}: error: {error}", file=sys.stderr)
            return 1

    return run


def add_model_commands(commands: Any, formatter_class: Any) -> None:
    """Register the deployment commands on the ``veilml`` sub-command parser."""

    def command(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=formatter_class)
        parser.set_defaults(handler=_guarded(handler))
        return parser

    p = command("compile", "compile an ONNX tree model into a deployment bundle (client/ and server/)", _compile)
    p.add_argument("model", help="an ONNX file with a TreeEnsembleClassifier / TreeEnsembleRegressor")
    p.add_argument(
        "--data", required=True, help="representative rows (.npy, or CSV without header): the input grid and the compile inputset"
    )
    p.add_argument("--out", required=True, help="the bundle directory to write")
    p.add_argument("--n-bits", type=int, default=6, help="input and leaf precision")
    p.add_argument("--signing-key", help="sign the bundle with this Ed25519 private key (from 'veilml sign --new-key')")

    p = command(
        "sign",
        "sign a bundle with an Ed25519 key (a server bundle is code: loaders given your public key accept only "
        "bundles you signed), or make a key pair",
        _sign,
    )
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

    p = command("keygen", "make this client's keys (or reuse them) and write its public evaluation keys", _keygen)
    client_args(p)
    p.add_argument("--out", required=True, help="file for the evaluation keys ('-': stdout)")
    p.add_argument("--force", action="store_true", help="make new keys even if key-dir has some")

    p = command("encrypt", "encrypt rows into one ciphertext batch", _encrypt)
    client_args(p)
    p.add_argument("--input", required=True, help="rows (.npy, or CSV without header; '-': stdin)")
    p.add_argument("--out", required=True, help="file for the ciphertext batch ('-': stdout)")

    p = command("run", "run the encrypted model on a ciphertext batch (server side: no secret key)", _run)
    p.add_argument("bundle", help="the bundle directory (or its server/)")
    p.add_argument("--keys", required=True, help="the client's evaluation keys (from veilml keygen)")
    p.add_argument("--input", required=True, help="the ciphertext batch ('-': stdin)")
    p.add_argument("--out", required=True, help="file for the result batch ('-': stdout)")
    trusted_key_arg(p)

    p = command("decrypt", "decrypt a result batch into predictions (CSV)", _decrypt)
    client_args(p)
    p.add_argument("--input", required=True, help="the result batch ('-': stdin)")
    p.add_argument("--out", default="-", help="CSV file for the predictions ('-': stdout)")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")

    from veilml.serving.limits import SERVE_LIMITS, add_limit_arguments

    p = command("serve", "serve a bundle over HTTP: TFHE rows (POST /predict) and whole tables (POST /batch/predict)", _serve)
    p.add_argument("bundle", help="the bundle directory")
    p.add_argument(
        "--state",
        default="~/.local/state/veilml/serve",
        help="directory for registered evaluation keys (kept across restarts, mode 0700)",
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
