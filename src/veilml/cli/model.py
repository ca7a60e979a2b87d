"""``veilml compile | sign | keygen | encrypt | run | decrypt | serve``: a deployed model from the shell.

``compile`` reads a model file by its suffix (:data:`veilml.cli.sources.FORMATS`: ONNX, XGBoost ``.json`` /
``.ubj``, LightGBM ``.txt``, scikit-learn ``.skops``). Every user error is one line and exit status 1; what a
command can check without loading a library (paths, suffixes, key directories) it checks first.

Each step reads and writes files (``-`` is stdin / stdout for the binary ones), so they chain::

    veilml sign --new-key maker.key                  # once: maker.key (0600) and maker.key.pub
    veilml compile model.json --data train.csv --out bundle --n-bits auto --signing-key maker.key
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

from veilml.cli import arguments
from veilml.cli.common import (
    CommandError,
    check_key_dir,
    default_state_dir,
    private_state_dir,
    read_tokens,
    run_app,
    service_modules,
)
from veilml.cli.sources import check_model_file
from veilml.cli.tables import align_columns, checked_names, read_table

__all__ = ["add_model_commands"]


def _read_bytes(path: str, what: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{what} {path} does not exist; check the path (or give '-' for stdin)") from None
    except IsADirectoryError:
        raise CommandError(f"{what} {path} is a directory; give a file") from None


def _check_output(path: str, what: str) -> None:
    """Refuse an output file that cannot be written, before the work that makes its bytes."""
    if path == "-":
        return
    if Path(path).is_dir():
        raise CommandError(f"{what} {path} is a directory; give a file name")
    if not Path(path).parent.is_dir():
        raise CommandError(f"{what} {path}: the directory {Path(path).parent} does not exist; make it or give another path")


def _write_bytes(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(path).write_bytes(data)


def _check_bundle(path: str, side: str) -> None:
    """Refuse a missing bundle before any library loads (the bundle's own checks come after)."""
    if not Path(path).is_dir():
        raise CommandError(
            f"bundle {path} {'is not a directory' if Path(path).exists() else 'does not exist'}; give the directory "
            f"'veilml compile --out' wrote (or its {side} directory)"
        )


def _check_out(out: str) -> None:
    """Refuse a --out that is not a place for a bundle: a bundle written there replaces the whole directory."""
    path = Path(out)
    if path.is_dir():
        others = sorted(entry.name for entry in path.iterdir() if entry.name not in ("client", "server", "model"))
        if others:
            raise CommandError(
                f"--out {out} exists and is not a veilml bundle (it holds {', '.join(others[:5])}); the bundle replaces "
                "the whole directory: give a new path, or the directory of an earlier bundle"
            )
        return
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CommandError(f"--out {out}: {existing} is a file, not a directory; give a new directory for the bundle")


def _compile(args: argparse.Namespace) -> int:
    check_model_file(args.model)  # the cheap refusals first: no library is loaded yet
    _check_out(args.out)
    table = read_table(args.data, "--data", header=args.header)
    private_key = _signing_key(args.signing_key) if args.signing_key else None
    from veilml.cli.sources import choose_bits, open_model
    from veilml.compiler import Configuration

    source = open_model(args.model)
    X = align_columns(table, source.feature_names, source.ensemble.n_features, args.data, "compile")
    with checked_names():
        if args.n_bits == "auto":
            n_bits, leaf_bits, found = choose_bits(source, X)
            print(f"veilml compile: --n-bits auto: {found}", file=sys.stderr)
        else:
            n_bits, leaf_bits = args.n_bits, None
        model = source.estimator(X, n_bits, leaf_bits)
        print(
            f"veilml compile: {type(model).__name__}, {X.shape[1]} features, {n_bits} bits: compiling…",
            file=sys.stderr,
            flush=True,
        )
        model.compile(X, Configuration(show_progress=False))
    model.save(args.out, signing_key=private_key)
    print(f"veilml compile: {model.report_}; bundle written to {args.out}", file=sys.stderr)
    if private_key is not None:
        _print_signed(args.out, private_key, "compile")
    _print_fingerprint(args.out, "compile")
    return 0


def _print_fingerprint(bundle: str, command: str) -> None:
    from veilml.serving.bundle import client_bundle_fingerprint

    print(
        f"veilml {command}: client bundle fingerprint {client_bundle_fingerprint(bundle)} "
        "(data owners pin it: RemoteModel(..., expected_fingerprint=...))",
        file=sys.stderr,
    )


def _signing_key(path: str) -> Any:
    """The private key of ``--signing-key`` / ``--key``, read before any work is done."""
    from veilml.runtime.manifest import load_private_key

    if not Path(path).is_file():
        raise CommandError(f"signing key {path} does not exist; make a key pair with 'veilml sign --new-key {path}'")
    return load_private_key(path)


def _print_signed(bundle: str, private: Any, command: str) -> None:
    from veilml.runtime.manifest import public_key_id

    print(f"veilml {command}: signed {bundle} (key {public_key_id(private.public_key())[:16]}…)", file=sys.stderr)


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
    _check_bundle(args.bundle, "client or server")
    private = _signing_key(args.key)
    from veilml.serving.bundle import sign_bundle

    for path in sign_bundle(args.bundle, private):
        _print_signed(str(path.parent), private, "sign")
    _print_fingerprint(args.bundle, "sign")
    return 0


def _client(args: argparse.Namespace, *, made_here: bool = False) -> Any:
    _check_bundle(args.bundle, "client")
    keygen = f"veilml keygen {args.bundle} --key-dir {args.key_dir} --out eval.keys"
    check_key_dir(args.key_dir, missing=None if made_here else f"run '{keygen}' first, or give the directory keygen used")
    from veilml.serving.bundle import ModelClient

    client = ModelClient(args.bundle, key_dir=Path(args.key_dir).expanduser(), trusted_key=args.trusted_key)
    if not made_here and not client._fhe.has_keys:
        raise CommandError(
            f"no keys for this model in {args.key_dir}; run 'veilml keygen {args.bundle} --key-dir {args.key_dir} "
            "--out eval.keys' first (keys are per model: a key directory may hold those of several)"
        )
    return client


def _keygen(args: argparse.Namespace) -> int:
    _check_output(args.out, "--out")
    client = _client(args, made_here=True)
    client.keygen(force=args.force)
    _write_bytes(args.out, client.evaluation_keys())
    print(f"veilml keygen: key id {client.key_id}; keys in {args.key_dir} (0600), evaluation keys in {args.out}", file=sys.stderr)
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    table = read_table(args.input, "--input", header=args.header)
    _check_output(args.out, "--out")
    client = _client(args)
    rows = align_columns(table, client.codec.feature_names, client.n_features, args.input, "encrypt")
    with checked_names():
        _write_bytes(args.out, client.encrypt(rows))
    return 0


def _run(args: argparse.Namespace) -> int:
    _check_bundle(args.bundle, "server")
    keys, batch = _read_bytes(args.keys, "--keys"), _read_bytes(args.input, "--input")
    _check_output(args.out, "--out")
    from veilml.serving.bundle import ModelServer

    server = ModelServer(args.bundle, trusted_key=args.trusted_key)
    key_id = server.register(keys)
    _write_bytes(args.out, server.run(batch, key_id))
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    results = _read_bytes(args.input, "--input")
    _check_output(args.out, "--out")
    client = _client(args)
    values = client.decrypt_proba(results) if args.proba else client.decrypt(results)
    import numpy as np

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
    _check_bundle(args.bundle, "server")
    from veilml.serving.limits import limits_from_args

    tokens = read_tokens(args.access_token_file) if args.access_token_file else None
    try:
        limits = limits_from_args(args)
    except ValueError as error:
        raise CommandError(str(error)) from None
    state = private_state_dir(Path(args.state).expanduser() if args.state else default_state_dir())
    service_modules("serving")
    from veilml.serving.model_service import create_model_app

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


def add_model_commands(commands: Any, formatter_class: Any, wanted: Any = None) -> None:
    """Register the deployment commands on the ``veilml`` sub-command parser: those in ``wanted`` (None: all) with
    their arguments, the others by name and help only (enough for ``veilml --help``)."""

    def command(name: str, help_text: str, handler: Any, add_arguments: Any) -> None:
        parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=formatter_class)
        parser.set_defaults(handler=handler)
        if wanted is None or name in wanted:
            add_arguments(parser)

    command(
        "compile", "compile a tree model file into a deployment bundle (client/ and server/)", _compile, arguments.compile_args
    )
    command(
        "sign",
        "sign a bundle with an Ed25519 key (a server bundle is code: loaders given your public key accept only "
        "bundles you signed), or make a key pair",
        _sign,
        arguments.sign_args,
    )
    command(
        "keygen", "make this client's keys (or reuse them) and write its public evaluation keys", _keygen, arguments.keygen_args
    )
    command("encrypt", "encrypt rows into one ciphertext batch", _encrypt, arguments.encrypt_args)
    command("run", "run the encrypted model on a ciphertext batch (server side: no secret key)", _run, arguments.run_args)
    command("decrypt", "decrypt a result batch into predictions (CSV)", _decrypt, arguments.decrypt_args)
    command(
        "serve",
        "serve a bundle over HTTP: TFHE rows (POST /predict) and whole tables (POST /batch/predict)",
        _serve,
        arguments.serve_args,
    )
