"""The ``bfv`` worker's torch kernels on an accelerator: bit-exact against the numba ones, and timed.

    .venv/bin/python benchmarks/bfv_device_check.py [--device cuda] [--rows 32] [--layers 1]

One Llama-3.2-1B layer's seven projections (hidden 2048, intermediate 8192, 8 of 32 heads for k and v),
forward ``x @ W`` and backward ``g @ W.T``, for ``--rows`` rows: the client encrypts once on the CPU; the
same ciphertexts go to a numba worker (CPU) and to a torch worker on ``--device``; their result bytes must be
equal (the first answer, with the session's hint, and a steady one, timed) and decrypt to the clear integer
product (``--device cpu`` checks the torch kernels on the CPU). Prints one line per product and a summary
(worker seconds of the steady requests on each side, the ratio). ``scripts/gpu_check.sh`` runs it; it fails (exit 1) on any difference.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SHAPES = {  # Llama-3.2-1B: (d_in, d_out) of each projection
    "q_proj": (2048, 2048),
    "k_proj": (2048, 512),
    "v_proj": (2048, 512),
    "o_proj": (2048, 2048),
    "gate_proj": (2048, 8192),
    "up_proj": (2048, 8192),
    "down_proj": (8192, 2048),
}


def timed_run(server, ciphertext: bytes, keys: bytes, device: str) -> tuple[bytes, float]:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    started = time.perf_counter()
    result = server.run(ciphertext, keys)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> int:
    from veilml.linear.bfv import BFVBackend

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch_side = f"torch on {args.device}"
    cpu, accelerated = BFVBackend(device="cpu"), BFVBackend(device=args.device, kernels="torch")
    totals, failures = {"numba": 0.0, torch_side: 0.0}, 0
    for layer in range(args.layers):
        for name, (d_in, d_out) in SHAPES.items():
            weights = rng.integers(-127, 128, size=(d_in, d_out))
            for direction, matrix, width in (("forward", weights, d_in), ("backward", weights.T, d_out)):
                x = rng.integers(0, 256, size=(args.rows, width))
                session = cpu.session()
                servers = {"numba": cpu.server(matrix, 8), torch_side: accelerated.server(matrix, 8)}
                keys = session.register("m", servers["numba"].spec, servers["numba"].setup())
                first = session.encrypt("m", x)  # the session's first request asks for the hint
                hints = {side: server.run(first, keys) for side, server in servers.items()}  # kernels compiled too
                session.decrypt("m", hints[torch_side])  # the session keeps the hint
                ciphertext = session.encrypt("m", x)  # a steady request: the outputs only
                results = {}
                for side, server in servers.items():
                    device = args.device if side == torch_side else "cpu"
                    results[side], seconds = timed_run(server, ciphertext, keys, device)
                    totals[side] += seconds
                same = results["numba"] == results[torch_side] and hints["numba"] == hints[torch_side]
                exact = np.array_equal(session.decrypt("m", results[torch_side]), x.astype(np.int64) @ matrix.astype(np.int64))
                failures += not (same and exact)
                print(f"layer {layer} {name} {direction}: bytes equal {same}, exact {exact}", flush=True)
    ratio = totals["numba"] / max(totals[torch_side], 1e-9)
    scale = 16 / args.layers
    print(
        f"worker seconds for {args.layers} Llama-1B layer(s) at {args.rows} rows: numba (CPU) {totals['numba']:.3f} s, "
        f"{torch_side} {totals[torch_side]:.3f} s, {ratio:.1f}x; times {scale:g} for the 16 layers of a step: "
        f"numba {totals['numba'] * scale:.1f} s, {torch_side} {totals[torch_side] * scale:.2f} s; {failures} product(s) differ"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
