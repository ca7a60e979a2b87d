"""The integer IR, its analyses and interpreter, and its lowering to concrete-python.

Nothing here knows what a tree or a transformer is. ``concrete`` is imported only when a graph is
compiled or a configuration converted. The modules:

- ``ir``: the op enum, ``Node`` and ``Graph``, ``IRError``, and the op helpers shared by the
  interpreter, range inference and the lowering (``round_bits``, ``lut_index``, ``CMP_FUNCTIONS``).
- ``spec``: the rules every graph follows (``verify_graph``).
- ``builder``: ``GraphBuilder``, which builds verified graphs node by node.
- ``interpreter``: the numpy reference meaning of every op (``evaluate``, which is ``fhe="disable"``).
- ``ranges``: sound per-element bounds and bit widths of every node (``infer_ranges``).
- ``narrowing``: cutting a graph's input to the elements its gathers read.
- ``passes``: the compile pipeline, a named list of small passes with the spec checked around them.
- ``lowering``: ``compile_graph`` (the passes, then concrete's tracing), ``CompiledGraph`` and
  ``CircuitReport``.
- ``configuration``: ``Configuration``, the compilation settings mapped onto concrete's.
- ``key_sizes``: exact key and input sizes from a circuit's client specs.
- ``cost``: what one row of a graph costs, from the graph alone.
- ``serialize``: saving and loading graphs (hash-checked, with bounded reads).
- ``encodings``: the input encodings (``InputEncoding``).
"""

from veilml.compiler.builder import GraphBuilder
from veilml.compiler.configuration import Configuration, GPUUnavailableError
from veilml.compiler.encodings import InputEncoding
from veilml.compiler.interpreter import evaluate
from veilml.compiler.ir import Graph, IRError, Node, Ops
from veilml.compiler.lowering import CircuitReport, CompiledGraph, compile_graph
from veilml.compiler.passes import PassError
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
    "PassError",
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
