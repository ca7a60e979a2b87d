"""A cost function over the IR: what one row of a graph costs before anything is compiled.

It counts what drives the wall clock of a TFHE circuit run (measured, DESIGN.md): the encrypted
inputs (the client encrypts each one, the server decompresses each one), the programmable
bootstraps by input precision (read off :func:`~veilml.compiler.ranges.infer_ranges`), and the
encrypted outputs. :class:`CostModel` turns the counts into seconds with per-item constants
measured on a 2-core x86 machine with concrete-python 2.11 (one core's work; a lookup over a
tensor is spread over cores by ``loop_parallelize``). The figures rank lowerings; they are
checked against measured runs in ``benchmarks/trees.py``, not promised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from veilml.compiler.ir import Graph, Ops
from veilml.compiler.narrowing import narrow_input
from veilml.compiler.ranges import infer_ranges

__all__ = ["CostModel", "GraphCost", "graph_cost"]


def _default_pbs_seconds() -> dict[int, float]:
    # One bootstrap on one core by input precision (bits): measured here for 2, 3 and 6 bits
    # (0.016, 0.012-0.02, 0.076 s), the others interpolated along tfhe-rs' published curve.
    return {1: 0.010, 2: 0.012, 3: 0.014, 4: 0.020, 5: 0.040, 6: 0.075, 7: 0.20, 8: 0.65}


@dataclass(frozen=True)
class CostModel:
    """Seconds (one core) per item of a row's work, and bytes per ciphertext on the wire."""

    # veilml's seeded inputs (runtime/seeded_inputs.py), measured on breast cancer's 1,890 thermometer
    # bits at dimension 1536: 6 ms to encrypt a row; the server expands and hands concrete only the
    # ciphertexts the circuit reads (narrowed inputs), about 40 microseconds each (concrete's own
    # seeded inputs cost 1.3e-4 s on the client and 1.4e-4 s on the server per ciphertext: its wheel
    # expands seeds with a software AES)
    client_per_input_s: float = 3.5e-6  # seeded encryption of one input ciphertext
    server_per_input_s: float = 4e-5  # expanding one read ciphertext and carrying it into the circuit
    server_per_call_s: float = 0.04  # concrete's set-up of each call (measured: 45-50 ms for one lookup)
    client_per_output_s: float = 1.0e-4  # decrypting one output ciphertext
    pbs_s: dict[int, float] = field(default_factory=_default_pbs_seconds)
    bytes_per_input: int = 8  # a seeded input: one 8-byte body per ciphertext
    bytes_per_row_up: int = 40  # and one header (its seed) per row
    bytes_per_output: int = 8_208  # an LWE ciphertext of dimension 1024, uncompressed

    def pbs_seconds(self, precision: int) -> float:
        known = max(p for p in self.pbs_s if p <= max(precision, min(self.pbs_s)))
        # beyond the table: about 3x per extra bit (tfhe-rs' curve)
        return self.pbs_s[known] * 3.0 ** max(0, precision - known)


@dataclass(frozen=True)
class GraphCost:
    """What one row of a graph costs: counts, and their estimate in seconds and bytes."""

    inputs: int
    outputs: int
    pbs_by_precision: dict[int, int]
    read_inputs: int | None = None  # of the inputs, those the circuit reads (narrowing); None: all

    @property
    def pbs_count(self) -> int:
        return sum(self.pbs_by_precision.values())

    def estimate(self, model: CostModel | None = None) -> dict[str, float]:
        """Seconds of client and server work per row (one core) and bytes up and down."""
        model = model or CostModel()
        client_encrypt = self.inputs * model.client_per_input_s
        client_decrypt = self.outputs * model.client_per_output_s
        server_inputs = (self.inputs if self.read_inputs is None else self.read_inputs) * model.server_per_input_s
        server_pbs = sum(n * model.pbs_seconds(p) for p, n in self.pbs_by_precision.items())
        return {
            "client_encrypt_s": client_encrypt,
            "server_call_s": model.server_per_call_s,
            "server_inputs_s": server_inputs,
            "server_pbs_s": server_pbs,
            "client_decrypt_s": client_decrypt,
            "client_s": client_encrypt + client_decrypt,
            "server_s": model.server_per_call_s + server_inputs + server_pbs,
            "total_s": client_encrypt + client_decrypt + model.server_per_call_s + server_inputs + server_pbs,
            "bytes_up": float(model.bytes_per_row_up + self.inputs * model.bytes_per_input),
            "bytes_down": float(self.outputs * model.bytes_per_output),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pbs_count": self.pbs_count, "estimate": self.estimate()}


def _component_widths(graph: Graph, ranges: list) -> list[int]:
    """Per node, the bit width concrete gives it: the widest node of its leveled component.

    Leveled operations (additions, products by constants, gathers) share one encoding across their
    operands and result, so a whole connected group of them takes its widest member's precision;
    a lookup starts a new group. A lookup's precision is that of its input's group (measured:
    2-bit lookups whose inputs are summed with 3-bit values run as 3-bit ones).
    """
    parent = list(range(len(graph.nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, node in enumerate(graph.nodes):
        if node.op in (Ops.LUT, Ops.CMP, Ops.ROUND, Ops.INPUT, Ops.CONST):
            continue
        for src in node.src:
            if graph.nodes[src].op is not Ops.CONST:
                parent[find(src)] = find(i)
    widest: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.op is not Ops.CONST:
            root = find(i)
            widest[root] = max(widest.get(root, 1), ranges[i].bit_width)
    return [widest.get(find(i), 1) for i in range(len(graph.nodes))]


def graph_cost(graph: Graph) -> GraphCost:
    """Inputs, outputs and lookups by precision of ``graph``, from its range analysis."""
    ranges = infer_ranges(graph)
    widths = _component_widths(graph, ranges)
    inputs = outputs = 0
    pbs: dict[int, int] = {}
    for node in graph.nodes:
        if node.op is Ops.INPUT:
            inputs += node.size
        elif node.op is Ops.OUTPUT:
            outputs += node.size
        elif node.op in (Ops.LUT, Ops.CMP, Ops.ROUND):
            width = widths[node.src[0]]
            if node.op is Ops.ROUND:
                width -= node.arg[0]
            pbs[width] = pbs.get(width, 0) + node.size
    _, columns = narrow_input(graph)  # what the server keeps of a seeded row
    return GraphCost(inputs, outputs, dict(sorted(pbs.items())), None if columns is None else len(columns))
