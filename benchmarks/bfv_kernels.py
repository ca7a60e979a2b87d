"""The per-operation costs of the ``bfv`` engine that its planner uses (:class:`veilml.linear.bfv.params.RNSCosts`).

    .venv/bin/python benchmarks/bfv_kernels.py [--repeats 5] [--layer]

On one numba thread (``set_threads(1)``: the planner's costs are seconds on one core; BLAS keeps its own
threads), the median of ``--repeats`` runs after one warm-up (numba's compilation is cached and not counted):

- ``mac``: one multiply-accumulate of the slot-wise GEMM of the hints, per prime (a SmolLM2 MLP block:
  64 x 72 @ 72 x 192 per slot, 128 slots);
- ``butterfly``: one butterfly of the transforms, per prime (lengths 128 and 2048, forward and inverse);
- ``dgemm_mac``: one multiply-add of the worker's float64 product of residues by the matrix, per prime;
- ``encrypt``: per input ciphertext, the client's encryption and packing, less its transforms;
- ``result``: per output, the worker's unpacking, checks, CRT, switch and packing and the client's unpacking,
  less the worker's product and the decryption's products;
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


def _request(n: int, d: int, m: int, seed: int = 0) -> tuple:
    from veilml.linear.bfv.backend import BFVBackend

    rng = np.random.default_rng(seed)
    backend = BFVBackend()
    server = backend.server(rng.integers(-127, 128, size=(d, m)), 8)
    session = backend.session()
    keys = session.register("m", server.spec, server.setup())
    x = rng.integers(0, 256, size=(n, d))
    session.decrypt("m", server.run(session.encrypt("m", x), keys))  # the first request brings the hint
    return server, session, keys, x


def measure_dgemm_mac(repeats: int) -> float:
    """One multiply-add of the worker's float64 product of residues by the matrix, per prime (BLAS's threads)."""
    from veilml.linear.bfv.ops import NumbaKernels
    from veilml.linear.bfv.params import MODULI

    rng = np.random.default_rng(4)
    rows = np.stack([rng.integers(0, p, (32, 1536)) for p in MODULI]).astype(np.int32)
    matrix = rng.integers(-127, 128, (1536, 576)).astype(np.int16)
    seconds = median_seconds(lambda: NumbaKernels().matmul_mod(rows, matrix, 1), repeats)
    return seconds / (2 * 32 * 1536 * 576)


def measure_encrypt_and_result(repeats: int, butterfly: float, dgemm_mac: float, decrypt_mac: float) -> tuple[float, float]:
    """Seconds per input ciphertext and per output of a 32-row request through a (576, 1536) matrix, less what the
    planner counts separately: the client's transforms, the worker's product, the decryption's products."""
    from veilml.linear.bfv.planner import POLY_DEGREE

    server, session, keys, x = _request(32, 576, 1536)
    plan = server.plan(server.params(keys), 32)
    r, j, c = plan.counts(32, 576, 1536)
    ring = POLY_DEGREE // 2 * (POLY_DEGREE.bit_length() - 1) * 2 * butterfly  # one ring transform, both primes
    client = median_seconds(lambda: session.encrypt("m", x), repeats)
    encrypt = (client - r * ring) / (r * j) - ring  # less the secrets' transforms and each a_j s_r's inverse one
    ciphertext = session.encrypt("m", x)
    run = median_seconds(lambda: server.run(ciphertext, keys), repeats)
    result = server.run(ciphertext, keys)
    pending = dict(session._pending)
    decrypt = median_seconds(lambda: (session._pending.update(pending), session.decrypt("m", result)), repeats)
    outputs = r * c * plan.n_t
    rest = run - 2 * r * plan.n_t * 576 * c * dgemm_mac + decrypt - outputs * POLY_DEGREE * decrypt_mac
    return encrypt, rest / outputs


def measure_decrypt_mac(repeats: int) -> float:
    from veilml.linear.bfv.encoding import decrypt_outputs, selection
    from veilml.linear.bfv.prg import ternary_secret

    rng = np.random.default_rng(2)
    chosen = selection(ternary_secret(), 8, 8, 32)  # 256 outputs per ciphertext
    c1, c0 = rng.integers(0, 2**40, (64, 2048)), rng.integers(0, 2**40, (64, 256))
    seconds = median_seconds(lambda: decrypt_outputs(chosen, c1, c0, 40, 12, 2**28), repeats)
    return seconds / (64 * 2048 * 256)


def measure_layer(repeats: int) -> dict[str, float]:
    """One SmolLM2-135M layer's 14 products at 1 x 32 tokens, client and worker in this process, every thread (after
    a first pass that brings each matrix's hint, not counted)."""
    from veilml.linear.bfv.backend import BFVBackend
    from veilml.linear.bfv.threads import set_threads

    set_threads(None)
    backend = BFVBackend()
    rng = np.random.default_rng(3)
    shapes = [shape for d, m in SMOLLM2.values() for shape in ((d, m), (m, d))]  # x @ W and g @ W.T
    products = []
    for shape in shapes:
        server, session = backend.server(rng.integers(-127, 128, size=shape), 8), backend.session()
        keys = session.register("m", server.spec, server.setup())
        products.append((server, session, keys, rng.integers(0, 256, size=(32, server.spec.rows))))
    totals = {"encrypt": [], "worker": [], "decrypt": [], "cpu": [], "up_bytes": [], "down_bytes": []}
    hint_bytes = 0
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
        if repeat:  # the first pass brings the hints and compiles
            for key, value in step.items():
                totals[key].append(value)
        else:
            hint_bytes = int(step["down_bytes"])
    layer = {key: statistics.median(values) for key, values in totals.items()}
    layer["first_down_bytes"] = hint_bytes
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
    measured["dgemm_mac"] = measure_dgemm_mac(args.repeats)
    measured["decrypt_mac"] = measure_decrypt_mac(args.repeats)
    measured["encrypt"], measured["result"] = measure_encrypt_and_result(
        args.repeats, measured["butterfly"], measured["dgemm_mac"], measured["decrypt_mac"]
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
            "worker in one process, every thread; median of the repeats, after a first pass that brings each matrix's "
            f"hint: {layer['first_down_bytes'] / 2**20:.1f} MiB down for the layer, once per session):",
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
