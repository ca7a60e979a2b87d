"""The integer IR, its analyses and interpreter, and its lowering to concrete-python.

Nothing here knows what a tree or a transformer is. ``concrete`` is imported only when a graph is
compiled or a configuration converted.
"""

from veilml.compiler.builder import GraphBuilder
from veilml.compiler.configuration import Configuration, GPUUnavailableError
from veilml.compiler.encodings import InputEncoding
from veilml.compiler.interpreter import evaluate
from veilml.compiler.ir import Graph, IRError, Node, Ops
from veilml.compiler.lowering import CircuitReport, CompiledGraph, compile_graph
from veilml.compiler.ranges import Range, bit_width, infer_ranges
from veilml.compiler.serialize import graph_from_bytes, graph_hash, graph_to_bytes, load_graph, save_graph
from veilml.compiler.spec import verify_graph

__all__ = [
    "CircuitReport",
    "CompiledGraph",
    "Configuration",
    "GPUUnavailableError",
    "Graph",
    "GraphBuilder",
    "IRError",
    "InputEncoding",
    "Node",
    "Ops",
    "Range",
    "bit_width",
    "compile_graph",
    "evaluate",
    "graph_from_bytes",
    "graph_hash",
    "graph_to_bytes",
    "infer_ranges",
    "load_graph",
    "save_graph",
    "verify_graph",
]
