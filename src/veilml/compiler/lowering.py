"""Lowering of the integer IR to a concrete-python circuit, and the report of what it costs.

:func:`compile_graph` runs the passes of :mod:`veilml.compiler.passes` on the graph, then traces
:func:`to_concrete_function` of the result (each op written as in :data:`LOWER`) with concrete over the
checked inputset and the corners of the declared input ranges. :class:`CompiledGraph` holds the circuit
and simulates it on whole rows; :class:`CircuitReport` holds its deterministic cost figures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from veilml.compiler.configuration import Configuration
from veilml.compiler.ir import CMP_FUNCTIONS, Graph, Node, Ops, lut_index
from veilml.compiler.key_sizes import key_sizes, wire_input_bytes
from veilml.compiler.passes import CompileState, run_passes
from veilml.compiler.ranges import Range, bit_width, infer_ranges

__all__ = ["CircuitReport", "CompiledGraph", "compile_graph", "to_concrete_function"]


def _lut(fhe: Any, node: Node, x: Any, source: Range) -> Any:
    table, offset = node.arg
    if table.ndim == 1:
        return fhe.univariate(lambda v: table[lut_index(v, offset, table.shape[-1])])(x)
    # one table per element: concrete's multi-table lookup, each table indexed by the value itself
    # over the source's whole range (a signed source indexes from the end, as numpy does)
    low, high = int(source.low.min()), int(source.high.max())
    width = source.bit_width
    values = np.arange(2**width) if low >= 0 else np.concatenate([np.arange(2 ** (width - 1)), np.arange(-(2 ** (width - 1)), 0)])
    rows = table[:, lut_index(values, offset, table.shape[-1])]
    assert low >= values.min() and high <= values.max()
    return fhe.LookupTable([fhe.LookupTable([int(v) for v in row]) for row in rows])[x]


def _round(fhe: Any, node: Node, x: Any, source: Range) -> Any:
    """Round or truncate low bits, on a non-negative value.

    concrete-python 2.11 rounds some signed ranges wrongly (seen: [-1, 4] rounds 1 to 4), so a
    signed value is first shifted up by a multiple of 2**lsbs, which commutes with the rounding.
    """
    lsbs, mode = node.arg
    shift = -(int(source.low.min()) >> lsbs) << lsbs if source.signed else 0
    if shift:
        x = fhe.hint(x + shift, bit_width=bit_width(0, int(source.high.max()) + shift))
    if mode == "round":
        x = fhe.round_bit_pattern(x, lsbs_to_remove=lsbs)
    else:
        x = fhe.truncate_bit_pattern(x, lsbs_to_remove=lsbs)
    return x - shift if shift else x


# How each op is written with concrete-python's traced numpy; ``fhe`` is the concrete.fhe module.
LOWER: dict[Ops, Callable[..., Any]] = {
    Ops.CONST: lambda fhe, n: np.ascontiguousarray(n.arg),
    # a batched circuit (Configuration.batch_size > 1) carries rows on a leading axis
    Ops.GATHER: lambda fhe, n, x: x[np.asarray(n.arg, dtype=np.int64)] if len(x.shape) == 1 else x[:, np.asarray(n.arg)],
    Ops.ADD: lambda fhe, n, a, b: a + b,
    Ops.SUB: lambda fhe, n, a, b: a - b,
    Ops.MUL: lambda fhe, n, a, c: a * c,
    Ops.MATMUL: lambda fhe, n, x: x @ np.ascontiguousarray(n.arg),
    Ops.SUM: lambda fhe, n, x: np.sum(x, axis=-1, keepdims=True),
    Ops.CMP: lambda fhe, n, x, c: CMP_FUNCTIONS[n.arg](x, c),
    Ops.LUT: _lut,  # also receives the source's Range
    Ops.ROUND: _round,  # also receives the source's Range
    Ops.ASSUME: lambda fhe, n, x: x,
    Ops.OUTPUT: lambda fhe, n, x: x,
}


def to_concrete_function(graph: Graph, ranges: Sequence[Range] | None = None) -> Callable[..., Any]:
    """A function of one sample that concrete can trace, with one parameter per graph input.

    Each encrypted value is hinted with the bit width inferred from the declared input ranges,
    so the circuit stays exact on any valid input, not only on those of the inputset.
    """
    from concrete import fhe

    ranges = infer_ranges(graph) if ranges is None else ranges
    encrypted = graph.encrypted()
    names = graph.input_names()

    def function(*args: Any, **kwargs: Any) -> Any:
        feed = iter(list(args) + [kwargs[name] for name in names[len(args) :]])
        values: list[Any] = []
        for i, node in enumerate(graph.nodes):
            if node.op is Ops.INPUT:
                value = next(feed)
            elif node.op in (Ops.ROUND, Ops.LUT):
                value = LOWER[node.op](fhe, node, values[node.src[0]], ranges[node.src[0]])
            else:
                value = LOWER[node.op](fhe, node, *(values[s] for s in node.src))
            if encrypted[i]:
                value = fhe.hint(value, bit_width=ranges[i].bit_width)
            values.append(value)
        results = tuple(values[i] for i in graph.outputs)
        return results[0] if len(results) == 1 else results

    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    function.__name__ = "veilml_graph"
    return function


@dataclass(frozen=True)
class CircuitReport:
    """Deterministic cost figures of a compiled circuit.

    Counts, precision, complexity, error probabilities and ciphertext sizes are concrete's
    statistics. Key sizes are computed from the key parameters (``compiler.key_sizes``) and equal
    the serialized keys up to a few hundred bytes of header: ``evaluation_key_bytes`` is the key
    set in memory on the server, ``compressed_evaluation_key_bytes`` what travels when
    ``Configuration(compress_evaluation_keys=True)`` (the default).
    """

    pbs_count: int
    max_bit_width: int
    complexity: float
    pbs_by_precision: dict[int, int]
    key_switch_count: int
    secret_key_bytes: int
    bootstrap_key_bytes: int
    keyswitch_key_bytes: int
    compressed_evaluation_key_bytes: int
    input_bytes: int
    output_bytes: int
    p_error: float
    global_p_error: float

    @property
    def evaluation_key_bytes(self) -> int:
        return self.bootstrap_key_bytes + self.keyswitch_key_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evaluation_key_bytes"] = self.evaluation_key_bytes
        return d

    def __str__(self) -> str:
        by_precision = ", ".join(f"{k}-bit: {v}" for k, v in sorted(self.pbs_by_precision.items()))
        return (
            f"PBS: {self.pbs_count} ({by_precision or 'none'}); max precision: {self.max_bit_width} bits; "
            f"complexity: {self.complexity:.3g}; evaluation keys: {self.evaluation_key_bytes / 2**20:.1f} MiB "
            f"({self.compressed_evaluation_key_bytes / 2**20:.1f} MiB compressed); "
            f"input: {self.input_bytes / 2**10:.0f} KiB, output: {self.output_bytes / 2**10:.0f} KiB"
        )


def _pbs_by_precision(circuit: Any) -> dict[int, int]:
    """Table lookups per input bit width, read off concrete's assigned graph."""
    counts: dict[int, int] = {}
    for node in circuit.graph.graph.nodes:
        if node.converted_to_table_lookup:
            width = node.inputs[0].dtype.bit_width
            counts[width] = counts.get(width, 0) + int(np.prod(node.output.shape))
    return counts


def make_report(circuit: Any, wire_values: int | None = None) -> CircuitReport:
    """The report of a compiled circuit; ``wire_values``: values per call the client encrypts, when
    the circuit takes fewer (narrowed input)."""
    stats = circuit.statistics
    keys = key_sizes(circuit.client.specs)
    return CircuitReport(
        pbs_count=int(stats["programmable_bootstrap_count"]),
        max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
        complexity=float(stats["complexity"]),
        pbs_by_precision=_pbs_by_precision(circuit),
        key_switch_count=int(stats["key_switch_count"]),
        secret_key_bytes=keys.secret,
        bootstrap_key_bytes=keys.bootstrap,
        keyswitch_key_bytes=keys.keyswitch,
        compressed_evaluation_key_bytes=keys.bootstrap_compressed + keys.keyswitch_compressed,
        input_bytes=wire_input_bytes(circuit.client.specs, int(stats["size_of_inputs"]), wire_values),
        output_bytes=int(stats["size_of_outputs"]),
        p_error=float(stats["p_error"]),
        global_p_error=float(stats["global_p_error"]),
    )


def _corner_samples(graph: Graph) -> list[list[np.ndarray]]:
    """All-low and all-high samples of the declared input ranges, so signs are seen by concrete."""
    lows = [graph.nodes[i].arg[1] for i in graph.inputs]
    highs = [graph.nodes[i].arg[2] for i in graph.inputs]
    return [lows, highs]


class CompiledGraph:
    """A graph together with its concrete circuit.

    ``input_columns``: when the circuit takes only some elements of the graph's input (see
    :mod:`veilml.compiler.narrowing`), their positions; callers keep passing whole rows: the
    simulation selects them here, the server (``FHEServer(input_columns=...)``) before concrete.
    """

    def __init__(self, graph: Graph, circuit: Any, configuration: Configuration, input_columns: np.ndarray | None = None) -> None:
        self.graph = graph
        self.circuit = circuit
        self.configuration = configuration
        self.input_columns = input_columns
        wire = graph.nodes[graph.inputs[0]].size * configuration.batch_size if len(graph.inputs) == 1 else None
        self.report = make_report(circuit, wire_values=wire)

    def select(self, rows: np.ndarray) -> np.ndarray:
        """The elements of whole input rows (last axis) that the circuit takes."""
        return rows if self.input_columns is None else np.ascontiguousarray(rows[..., self.input_columns])

    @property
    def n_inputs(self) -> int:
        return len(self.graph.inputs)

    @property
    def batch_size(self) -> int:
        return self.configuration.batch_size

    def calls(self, rows: np.ndarray) -> list[np.ndarray]:
        """``rows`` cut into the circuit's calls: single rows, or ``batch_size`` rows (the last padded
        by repeating its last row; :meth:`uncall` drops what the padding produced)."""
        if self.batch_size == 1:
            return [np.ascontiguousarray(row) for row in rows]
        chunks = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            padding = np.repeat(chunk[-1:], self.batch_size - len(chunk), axis=0)
            chunks.append(np.ascontiguousarray(np.concatenate([chunk, padding])))
        return chunks

    def uncall(self, outputs: list[np.ndarray], n_rows: int) -> np.ndarray:
        """The (n_rows, size) stack of the per-call outputs of :meth:`calls`."""
        return np.concatenate([np.asarray(out).reshape(self.batch_size, -1) for out in outputs])[:n_rows]

    def simulate(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """concrete's simulation of the circuit on a batch (one call per sample, or per ``batch_size`` samples)."""
        inputs = [self.select(np.asarray(x, dtype=np.int64)) for x in inputs]
        n = inputs[0].shape[0]
        calls = [self.calls(x) for x in inputs]
        outs: list[tuple[np.ndarray, ...]] = []
        for args in zip(*calls):
            out = self.circuit.simulate(*args)
            outs.append(out if isinstance(out, tuple) else (out,))
        if not outs:
            return [np.zeros((0, self.graph.nodes[o].size), np.int64) for o in self.graph.outputs]
        return [self.uncall([out[k] for out in outs], n) for k in range(len(outs[0]))]

    def __repr__(self) -> str:
        return f"CompiledGraph({len(self.graph)} nodes; {self.report})"


def _concrete_inputset(graph: Graph, batches: list[np.ndarray], batch_size: int) -> list[Any]:
    """The samples concrete compiles with: those of ``batches`` and the corners of the declared input
    ranges, each a block of ``batch_size`` rows when the circuit is batched; one array per sample for a
    one-input graph, a tuple of arrays otherwise."""
    samples = [list(row) for row in zip(*batches)] + _corner_samples(graph)
    if batch_size > 1:  # every sample a block of batch_size rows, corners included
        b = batch_size
        samples = [
            [np.stack([samples[(i + j) % len(samples)][k] for j in range(b)]) for k in range(len(batches))]
            for i in range(len(samples))
        ]
    samples = [[np.ascontiguousarray(x) for x in s] for s in samples]
    if len(graph.inputs) == 1:
        return [s[0] for s in samples]
    return [tuple(s) for s in samples]


def compile_graph(
    graph: Graph,
    inputset: Iterable[Sequence[np.ndarray]] | Sequence[np.ndarray],
    configuration: Configuration | None = None,
) -> CompiledGraph:
    """Compile ``graph`` to a concrete circuit.

    ``inputset``: one (n_samples, size) array per graph input. The graph goes through the passes of
    :data:`veilml.compiler.passes.PIPELINE` (spec checked before and after each rewrite; every sample
    checked by the interpreter), then concrete traces :func:`to_concrete_function` of the result.
    """
    from concrete import fhe

    configuration = configuration or Configuration()
    state = CompileState(configuration, inputset)
    lowered = run_passes(graph, state)
    function = to_concrete_function(lowered)
    compiler = fhe.Compiler(function, {name: "encrypted" for name in lowered.input_names()})
    samples = _concrete_inputset(lowered, state.batches, configuration.batch_size)
    circuit = compiler.compile(samples, configuration.to_concrete())
    return CompiledGraph(graph, circuit, configuration, state.columns)
