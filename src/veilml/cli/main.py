"""The ``veilml`` command line (also ``python -m veilml``).

Commands:
    worker   serve a model's base linear layers to private LoRA clients, on encrypted activations
    (and the tree model commands of :mod:`veilml.cli.model` and :mod:`veilml.cli.predict`)

``veilml --help``, ``--version`` and argument errors answer at once: the parser gives arguments only to
the command being run (the others appear by name), and imports stay inside the commands.

A user error ends in one line, ``veilml COMMAND: error: ...``, and exit status 1 (argument errors: argparse's,
status 2); ``VEILML_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from veilml.cli.common import CommandError, one_line, read_tokens, run_app, service_modules
from veilml.errors import VeilmlError
from veilml.serving.limits import positive

__all__ = ["build_parser", "main", "serve", "version_text"]

#: the packages ``--version`` names beside veilml: the cryptography underneath (read from their metadata)
CRYPTO_PACKAGES = {
    "concrete-python": "TFHE: the tree models' circuits, the 'concrete' linear backend",
    "tenseal": "Microsoft SEAL: the batched tree path, the 'bfv-seal' linear backend",
    "concrete-ml-extensions": "the 'glwe' linear backend",
}


_positive_int = positive(int)
_positive_float = positive(float)


def _bits(text: str) -> int:
    value = _positive_int(text)
    if not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected a bit width from 2 to 16, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the absent ones."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def version_text() -> str:
    """``veilml --version``: veilml's version, Python's, and the installed crypto libraries' (from their package
    metadata: nothing is imported)."""
    from importlib import metadata

    from veilml import __version__

    lines = [f"veilml {__version__} (Python {sys.version.split()[0]})"]
    for package, role in CRYPTO_PACKAGES.items():
        try:
            lines.append(f"  {package} {metadata.version(package)}  ({role})")
        except metadata.PackageNotFoundError:
            lines.append(f"  {package} not installed  ({role})")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """``--version``, computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``veilml`` parser: ``veilml worker`` here, the tree model commands from :mod:`veilml.cli.model` and
    :mod:`veilml.cli.predict`. ``command`` (what :func:`main` runs): only that command gets its arguments, so
    that building the parser loads nothing the command does not need; None gives every command its own."""
    from veilml.cli.model import add_model_commands
    from veilml.cli.predict import add_predict_command

    parser = argparse.ArgumentParser(
        prog="veilml",
        description="veilml: machine learning on encrypted data (TFHE with concrete-python).",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show veilml's version and its crypto libraries' (concrete-python, SEAL) and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if command is None else {command}
    worker = _add_worker_command(commands, full=wanted is None or "worker" in wanted)
    if worker is not None:
        _add_worker_service_options(worker)
    add_model_commands(commands, _HelpFormatter, wanted)
    add_predict_command(commands, _HelpFormatter, wanted)
    return parser


def _add_worker_command(commands: Any, full: bool = True) -> argparse.ArgumentParser | None:
    """``veilml worker`` and what it serves: weights, layers, backend, precision (``full=False``: its name only,
    without the imports its arguments need; None is returned)."""
    help_text = "serve a model's base linear layers on encrypted activations (private LoRA fine-tuning)"
    if not full:
        commands.add_parser("worker", help=help_text).set_defaults(handler=_worker_command)
        return None
    from veilml.linear import limits
    from veilml.linear.base import BACKENDS

    worker = commands.add_parser(
        "worker",
        help=help_text,
        description=(
            "Serve the frozen base-model linear layers of a model over HTTP. Clients "
            "(veilml.linear.transport.HTTPTransport + EncryptedLinearExecutor) send evaluation keys and "
            "encrypted, quantized activations; the worker multiplies them by its quantized weights and "
            "returns encrypted results. It never receives a secret key. Each client session is protected by a "
            "secret of its own; --access-token-file decides who may query at all (anyone who can query can "
            "recover the quantized weights). It has no TLS of its own: keep it on loopback or a private "
            "network, or put it behind a proxy that adds TLS."
        ),
        formatter_class=_HelpFormatter,
    )
    worker.add_argument(
        "--weights",
        required=True,
        metavar="PATH",
        help=(
            "a Hugging Face model directory (or .gguf file), or a .safetensors file written by "
            "veilml.models.lora.weights.save_remote_weights"
        ),
    )
    worker.add_argument(
        "--layers",
        nargs="+",
        action="extend",
        metavar="PATTERN",
        help=(
            "serve only the linear layers whose names match these shell-style patterns, e.g. '*.attn.c_attn' "
            "(repeatable; default: the attention and MLP projections)"
        ),
    )
    worker.add_argument(
        "--backend",
        choices=tuple(BACKENDS),
        default=limits.DEFAULT_BACKEND,
        help=(
            "encrypted-linear backend: 'bfv' (exact, fast: BFV with coefficient encoding on veilml's numba or torch "
            "kernels), 'bfv-seal' (the same protocol computed with SEAL's BFV: exact, slower), 'concrete' "
            "(exact, compiled through veilml's IR), 'glwe' (approximate, compact, CUDA-capable), or 'clear' "
            "(plaintext: the worker sees the clients' data; testing only, clients must ask for it too)"
        ),
    )
    worker.add_argument(
        "--weight-bits", type=_bits, default=limits.DEFAULT_WEIGHT_BITS, metavar="BITS", help="bits of the quantized weights"
    )
    worker.add_argument(
        "--input-bits",
        type=_bits,
        default=limits.DEFAULT_INPUT_BITS,
        metavar="BITS",
        help="bits of the clients' quantized activations",
    )
    worker.set_defaults(handler=_worker_command)
    return worker


def _add_worker_service_options(worker: argparse.ArgumentParser) -> None:
    """How ``veilml worker`` serves: address, limits, caches, access tokens, logs."""
    from veilml.linear import limits
    from veilml.serving.limits import add_limit_arguments

    worker.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    worker.add_argument("--port", type=_port, default=8765, metavar="PORT", help="TCP port to listen on")
    add_limit_arguments(worker, limits.WORKER_LIMITS, aliases={"--max-key-sets": "--max-sessions"})
    worker.add_argument(
        "--weight-cache-mb",
        type=_positive_float,
        default=2048.0,
        metavar="N",
        help=(
            "bfv-seal backend: MiB of weights kept encoded in NTT form for every row-block size up to the largest "
            "that fits (for each size of 1, 2, 4, ... rows, up to 64: about 8 times the row count bytes per weight "
            "and direction); what does not fit is encoded per request ('bfv' keeps none: it reads the clear weights)"
        ),
    )
    worker.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help=(
            "bfv backend: where the worker computes: 'cpu' (numba kernels, the default) or a torch device such as "
            "'cuda' or 'cuda:1' (torch kernels, bit-identical results)"
        ),
    )
    worker.add_argument(
        "--circuit-cache",
        metavar="DIR",
        help="where compiled circuits are kept, so that a restart does not compile again (default: ~/.cache/veilml/circuits)",
    )
    worker.add_argument(
        "--access-token-file",
        metavar="PATH",
        help=(
            "a file (mode 0600) of access tokens, one per line as 'NAME TOKEN' (or just 'TOKEN'); every request but "
            "/health must present one (Authorization: Bearer), and quotas and fair shares are per token"
        ),
    )
    worker.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="uvicorn's log level",
    )


def serve(worker: Any, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info", **app_options: Any) -> None:
    """Serve ``worker`` (a :class:`~veilml.linear.worker.Worker`) with uvicorn until stopped.

    ``app_options`` go to :func:`veilml.linear.service.create_app` (``limits``, single limits such
    as ``max_payload_bytes``, ``access_token``). uvicorn's access log is off: it would print session ids;
    the app logs requests itself with the ids removed.
    """
    service_modules("the worker")
    from veilml.linear.service import create_app

    app = create_app(worker, **app_options)
    infos = worker.layers()
    print(
        f"veilml worker: {len(infos)} layer{'s' * (len(infos) != 1)}, backend {worker.backend}, "
        f"{worker.weight_bits}-bit weights, {worker.input_bits}-bit inputs",
        flush=True,
    )
    shown = sorted(infos)
    for name in shown[:50]:
        print(f"  {name}  ({infos[name].d_in} -> {infos[name].d_out})", flush=True)
    if len(shown) > 50:
        print(f"  … and {len(shown) - 50} more (GET /layers)", flush=True)
    if worker.backend == "clear":
        print("veilml worker: WARNING: the clear backend computes on plaintext; use it for testing only", flush=True)
    exposed = "" if app_options.get("access_token") else " and without an access token (--access-token-file)"
    run_app(app, "worker", host=host, port=port, log_level=log_level, exposed=exposed, paths="GET /health, GET /layers")


def _worker_command(args: argparse.Namespace) -> int:
    path = args.weights
    if not os.path.exists(path):
        raise CommandError(f"--weights {path!r} does not exist; give a Hugging Face model directory or a .safetensors file")
    if args.device != "cpu" and args.backend != "bfv":
        raise CommandError(f"--device {args.device} is for --backend bfv; the {args.backend} backend computes on the CPU")
    service_modules("the worker")
    try:
        from veilml.models.lora.weights import load_remote_weights
    except ImportError as error:
        raise CommandError(
            f"loading model weights needs the LoRA dependencies ({error}); install torch and transformers"
        ) from None

    print(f"veilml worker: loading {path}", flush=True)
    try:  # the loader's own default patterns when --layers is not given
        loaded = load_remote_weights(path, args.layers) if args.layers else load_remote_weights(path)
    except (ValueError, TypeError, OSError, ImportError) as error:
        raise CommandError(f"cannot load the weights of {path}: {error}") from None
    if not loaded:
        raise CommandError(f"no linear layer of {path} matches {args.layers}; widen --layers")

    from veilml.linear import Worker
    from veilml.serving.limits import limits_from_args

    weights = {name: w for name, (w, _) in loaded.items()}
    biases = {name: b for name, (_, b) in loaded.items() if b is not None}
    tokens = read_tokens(args.access_token_file) if args.access_token_file else None
    try:
        service_limits = limits_from_args(args)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.backend in ("concrete", "glwe"):
        print(f"veilml worker: preparing {2 * len(weights)} {args.backend} circuits (forward and backward)…", flush=True)
    try:
        from veilml.linear import get_backend

        options: dict[str, Any] = {}
        if args.backend == "concrete":
            options = {"run_timeout": service_limits.run_timeout, "cache_dir": args.circuit_cache}
        elif args.backend == "bfv":
            options = {"run_timeout": service_limits.run_timeout, "device": args.device}
        elif args.backend == "bfv-seal":
            options = {"weight_cache_bytes": int(args.weight_cache_mb * 2**20), "run_timeout": service_limits.run_timeout}
        backend = get_backend(args.backend, **options)
        worker = Worker(
            weights,
            biases,
            backend=backend,
            weight_bits=args.weight_bits,
            input_bits=args.input_bits,
            max_rows=service_limits.max_rows,
        )
    except ImportError as error:
        raise CommandError(f"the {args.backend} backend is not available here ({error}); choose another --backend") from None
    except ValueError as error:
        raise CommandError(f"cannot prepare the layers: {error}") from None
    serve(worker, host=args.host, port=args.port, log_level=args.log_level, limits=service_limits, access_token=tokens)
    return 0


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (``veilml`` itself takes no option
    with a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``veilml`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv) or "")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except (VeilmlError, ValueError, OSError) as error:  # CommandError, and the library's words on bad input
        if os.environ.get("VEILML_TRACEBACK", "").strip().lower() in ("1", "true", "yes"):
            raise
        print(f"veilml {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
