"""``veilml compile | keygen | encrypt | run | decrypt | serve``: a deployed model from the shell.

Each step reads and writes files (``-`` is stdin / stdout for the binary ones), so they chain::

    veilml compile model.onnx --data train.csv --out bundle
    veilml keygen bundle --key-dir keys --out eval.keys
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

from veilml.cli_common import LOOPBACK, CommandError, read_token

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
    return 0


def _client(args: argparse.Namespace) -> Any:
    from veilml.runtime.bundle import ModelClient

    return ModelClient(args.bundle, key_dir=args.key_dir)


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
    from veilml.runtime.bundle import ModelServer

    server = ModelServer(args.bundle)
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
    try:
        import uvicorn

        from veilml.runtime.model_service import create_model_app
    except ImportError as error:
        raise CommandError(f"serving needs FastAPI and uvicorn ({error}); pip install 'veilml[worker]'") from None
    token = read_token(args.access_token_file) if args.access_token_file else None
    app = create_model_app(
        args.bundle, args.state, workers=args.workers, max_payload_bytes=int(args.max_payload_mb * 2**20), access_token=token
    )
    server = app.state.server
    print(
        f"veilml serve: model {server.fingerprint[:12]}…, {server.n_features} features, {args.workers} FHE worker(s)", flush=True
    )
    print(f"veilml serve: keys kept in {Path(args.state) / 'keys'}", flush=True)
    if args.host not in LOOPBACK:
        print(
            f"veilml serve: WARNING: listening on {args.host}, beyond this machine, without TLS"
            + ("" if token else " and without an access token (--access-token-file): anyone who reaches it can query the model"),
            flush=True,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"veilml serve: listening on http://{host}:{args.port} (GET /health, GET /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def _guarded(handler: Any) -> Any:
    """Turn library errors on user input into one-line command errors."""

    def run(args: argparse.Namespace) -> int:
        from veilml.runtime.envelope import EnvelopeError
        from veilml.runtime.manifest import ArtifactError

        try:
            return handler(args)
        except (ArtifactError, EnvelopeError, FileNotFoundError, CommandError) as error:
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

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="the bundle directory (or its client/)")
        p.add_argument("--key-dir", required=True, help="where this client's keys are kept (secret keys 0600)")

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

    p = command("decrypt", "decrypt a result batch into predictions (CSV)", _decrypt)
    client_args(p)
    p.add_argument("--input", required=True, help="the result batch ('-': stdin)")
    p.add_argument("--out", default="-", help="CSV file for the predictions ('-': stdout)")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")

    p = command("serve", "serve a bundle over HTTP: POST /keys, POST /predict, GET /bundle/client, GET /health", _serve)
    p.add_argument("bundle", help="the bundle directory")
    p.add_argument("--state", required=True, help="directory for registered evaluation keys (kept across restarts)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="threads running FHE work")
    p.add_argument("--max-payload-mb", type=float, default=256.0, help="largest request body")
    p.add_argument("--access-token-file", help="a file (mode 0600) holding a token that every request but /health must present")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
