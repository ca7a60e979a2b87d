"""The per-operation costs of the ``bfv`` engine that its planner uses (:class:`veilml.linear.bfv.params.RNSCosts`).

    .venv/bin/python benchmarks/bfv_kernels.py [--repeats 5] [--layer]

On one thread (``set_threads(1)``: the planner's costs are seconds on one core), the median of ``--repeats``
runs after one warm-up (numba's compilation is cached and not counted):

- ``mac``: one multiply-accumulate of the slot-wise GEMM, per prime (a SmolLM2 MLP block: 64 x 72 @ 72 x 192
  per slot, 128 slots);
- ``butterfly``: one butterfly of the transforms, per prime (lengths 128 and 2048, forward and inverse);
- ``encrypt``: per input ciphertext, the client's encryption and packing and the worker's unpacking, checks
  and seed expansion, less their transforms (counted as butterflies);
- ``result``: per result ciphertext, the worker's CRT, switch and packing and the client's unpacking, less
  the transforms and the decryption's products;
- ``decrypt_mac``: one multiply-add of the client's decryption (float64 limbs, per output and coefficient).

With ``--layer``, also one SmolLM2-135M layer's 14 products at 1 x 32 tokens (q, k, v, o, gate, up, down
forward and the g @ W.T backward) through BFVSession and BFVServer in this process, on every thread.
Writes ``benchmarks/results/bfv_kernels.md`` (with the machine's load average, the figures are noisy on a
shared machine) and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMOLLM2 = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576), "gate": (576, 1536), "up": (576, 1536)}
SMOLLM2["down"] = (1536, 576)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: compilation, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_mac(repeats: int) -> float:
    from veilml.linear.bfv import kernels
    from veilml.linear.bfv.params import MODULI

    rng = np.random.default_rng(0)
    primes = np.array(MODULI, np.int64)
    slots, rows, inner, cols = 128, 64, 72, 192
    x = np.stack([rng.integers(0, p, (slots, rows, inner)) for p in MODULI]).astype(np.int32)
    w = np.stack([rng.integers(0, p, (slots, inner, cols)) for p in MODULI]).astype(np.int32)
    out = np.empty((2, slots, rows, cols), np.int32)
    seconds = median_seconds(lambda: kernels.gemm(x, w, out, primes, 0, slots), repeats)
    return seconds / (2 * slots * rows * inner * cols)


def measure_butterfly(repeats: int) -> float:
    from veilml.linear.bfv.ops import NumbaKernels

    ops, rng, costs = NumbaKernels(), np.random.default_rng(1), []
    for size, columns in ((128, 8192), (2048, 512)):
        a = rng.integers(0, 2**26, (2, size, columns)).astype(np.int32)
        butterflies = 2 * columns * size // 2 * (size.bit_length() - 1)
        costs.append(median_seconds(lambda a=a, size=size: ops.forward(a, size), repeats) / butterflies)
        costs.append(median_seconds(lambda a=a, size=size: ops.inverse(a, size), repeats) / butterflies)
    return statistics.mean(costs)


def _request(n: int, d: int, m: int, seed: int = 0, backend: object = None) -> tuple:
    from veilml.linear.bfv.backend import BFVBackend

    rng = np.random.default_rng(seed)
    backend = backend or BFVBackend()
    server = backend.server(rng.integers(-127, 128, size=(d, m)), 8)
    session = backend.session()
    keys = session.register("m", server.spec, server.setup())
    return server, session, keys, rng.integers(0, 256, size=(n, d))


def measure_encrypt_and_result(repeats: int, mac: float, butterfly: float, decrypt_mac: float) -> tuple[float, float]:
    """Seconds per input and per result ciphertext of a 1-row request through a (2048, 2048) matrix (one row per
    block: the ring's transforms), less what the planner counts separately: transforms, GEMM, decryption products."""
    from veilml.linear.bfv.params import MODULI, PRIME_BITS
    from veilml.linear.bfv.planner import POLY_DEGREE
    from veilml.linear.bfv.prg import expand_uniform
    from veilml.linear.bfv.product import check_residues, unpack_values
    from veilml.linear.bfv.wire import read_message

    server, session, keys, x = _request(1, 2048, 2048)
    plan = server.plan(server.params(keys), 1)
    r, j, c = plan.counts(1, 2048, 2048)
    ring = POLY_DEGREE // 2 * (POLY_DEGREE.bit_length() - 1) * 2 * butterfly  # one ring transform, both primes

    def upload() -> None:  # the client's encryption, the worker's checks and expansion
        _, _, frames = read_message(session.encrypt("m", x), server.ciphertext_format)
        first = unpack_values(frames[0], r * j * len(MODULI) * POLY_DEGREE, PRIME_BITS).reshape(r, j, 2, POLY_DEGREE)
        check_residues(first)
        expand_uniform(frames[1], 0, j)

    client = median_seconds(lambda: session.encrypt("m", x), repeats)
    uploaded = median_seconds(upload, repeats)
    encrypt = uploaded / (r * j) - 2 * ring  # the client's inverse transform of a s, the worker's transform of c0
    ciphertext = session.encrypt("m", x)
    run = median_seconds(lambda: server.run(ciphertext, keys), repeats)
    result = server.run(ciphertext, keys)
    decrypt = median_seconds(lambda: session.decrypt("m", result), repeats)
    gemm = 2 * 2 * r * POLY_DEGREE * j * c * mac
    rest = run - (uploaded - client) - gemm - r * j * ring - 2 * r * c * ring + decrypt
    return encrypt, rest / (r * c) - POLY_DEGREE * plan.n_t * plan.n_m * decrypt_mac


def measure_decrypt_mac(repeats: int) -> float:
    from veilml.linear.bfv.encoding import decrypt_outputs, selection
    from veilml.linear.bfv.prg import ternary_secret

    rng = np.random.default_rng(2)
    chosen = selection(ternary_secret(), 8, 8, 32)  # 256 outputs per ciphertext
    c1, c0 = rng.integers(0, 2**40, (64, 2048)), rng.integers(0, 2**40, (64, 256))
    seconds = median_seconds(lambda: decrypt_outputs(chosen, c1, c0, 40, 12, 2**28), repeats)
    return seconds / (64 * 2048 * 256)


def measure_layer(repeats: int) -> dict[str, float]:
    """One SmolLM2-135M layer's 14 products at 1 x 32 tokens, client and worker in this process, every thread.

    The layer's 14 matrices share one backend whose weight budget is a 30th of the default 2 GiB: what one layer
    of the 30 gets in a worker serving the whole model (the weights of 32-row blocks do not fit it: the worker
    transforms them for every request, as it would).
    """
    from veilml.linear.bfv.backend import BFVBackend
    from veilml.linear.bfv.cache import DEFAULT_WEIGHT_CACHE_BYTES
    from veilml.linear.bfv.threads import set_threads

    set_threads(None)
    backend = BFVBackend(weight_cache_bytes=DEFAULT_WEIGHT_CACHE_BYTES // 30)
    rng = np.random.default_rng(3)
    shapes = [shape for d, m in SMOLLM2.values() for shape in ((d, m), (m, d))]  # x @ W and g @ W.T
    servers = [backend.server(rng.integers(-127, 128, size=shape), 8) for shape in shapes]  # all announced first
    products = []
    for server in servers:
        session = backend.session()
        keys = session.register("m", server.spec, server.setup())
        products.append((server, session, keys, rng.integers(0, 256, size=(32, server.spec.rows))))
    totals = {"encrypt": [], "worker": [], "decrypt": [], "cpu": [], "up_bytes": [], "down_bytes": []}
    for repeat in range(repeats + 1):
        step = dict.fromkeys(totals, 0.0)
        cpu = time.process_time()
        for server, session, keys, x in products:
            start = time.perf_counter()
            ciphertext = session.encrypt("m", x)
            sent = time.perf_counter()
            result = server.run(ciphertext, keys)
            done = time.perf_counter()
            product = session.decrypt("m", result)
            step["decrypt"] += time.perf_counter() - done
            step["encrypt"] += sent - start
            step["worker"] += done - sent
            assert np.array_equal(product, x @ server.matrix.astype(np.int64))  # exact (not timed)
            step["up_bytes"] += len(ciphertext)
            step["down_bytes"] += len(result)
        step["cpu"] = time.process_time() - cpu  # every thread's CPU seconds, the exactness checks included
        if repeat:  # the first pass encodes the weights and compiles
            for key, value in step.items():
                totals[key].append(value)
    layer = {key: statistics.median(values) for key, values in totals.items()}
    layer["cached_rows"] = [server.cached_rows for server, *_ in products]
    layer["cached_32"] = sum(
        server.is_cached_shape(server.expected_params, server.plan(server.expected_params, 32)) for server in servers
    )
    layer["total"] = layer["encrypt"] + layer["worker"] + layer["decrypt"]
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", action="store_true", help="also time one SmolLM2-135M layer's products")
    args = parser.parse_args()
    from veilml.linear.bfv.params import RNS_COSTS
    from veilml.linear.bfv.threads import set_threads

    set_threads(1)
    load_before = os.getloadavg()
    measured = {"mac": measure_mac(args.repeats), "butterfly": measure_butterfly(args.repeats)}
    measured["decrypt_mac"] = measure_decrypt_mac(args.repeats)
    measured["encrypt"], measured["result"] = measure_encrypt_and_result(
        args.repeats, measured["mac"], measured["butterfly"], measured["decrypt_mac"]
    )
    layer = measure_layer(args.repeats) if args.layer else None
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "measured": measured,
        "planner": {key: getattr(RNS_COSTS, key) for key in measured},
        "layer": layer,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bfv_kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# bfv kernels: per-operation costs (one thread)",
        "",
        "`.venv/bin/python benchmarks/bfv_kernels.py" + (" --layer" if args.layer else "") + "` "
        f"({platform.platform()}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before and "
        f"{report['machine']['load_after'][0]:.2f} after: a shared machine, so the figures are noisy).",
        "",
        "| operation | measured | planner (`RNSCosts`) |",
        "|---|---|---|",
    ]
    for key, value in measured.items():
        unit = "ns" if value < 1e-6 else "µs"
        scale = 1e9 if unit == "ns" else 1e6
        lines.append(f"| {key} | {value * scale:.3g} {unit} | {getattr(RNS_COSTS, key) * scale:.3g} {unit} |")
    if layer:
        lines += [
            "",
            "One SmolLM2-135M layer at 1 x 32 tokens (q, k, v, o, gate, up, down forward and g @ W.T backward; client and "
            "worker in one process, every thread; median of the repeats; the 14 matrices share a 30th of the default "
            f"weight budget, as one layer of 30 in a worker: their cached rows {layer['cached_rows']}, so "
            f"{layer['cached_32']} of 14 products find their 32-row weights kept and the others transform them per request):",
            "",
            f"- encrypt {layer['encrypt']:.3f} s, worker {layer['worker']:.3f} s, decrypt {layer['decrypt']:.3f} s: "
            f"**{layer['total']:.3f} s per layer, {30 * layer['total']:.1f} s for 30 layers** ({layer['cpu']:.3f} CPU s per "
            "layer on all threads, the untimed exactness checks included: wall time close to CPU time means the other "
            "core was busy)",
            f"- {layer['up_bytes'] / 2**20:.1f} MiB up, {layer['down_bytes'] / 2**20:.1f} MiB down per layer "
            f"({30 * (layer['up_bytes'] + layer['down_bytes']) / 2**30:.2f} GiB for 30 layers)",
        ]
    (RESULTS / "bfv_kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
