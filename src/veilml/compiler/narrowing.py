"""Input narrowing: the circuit takes only the input elements the graph reads.

A tree's client encrypts a model-independent code of every feature (the thermometer code: 63 bits per
feature at 6 bits), and the graph gathers the few bits its comparisons read: 13 of breast cancer's
1,890 for a depth-5 tree. concrete spends time on every element of its input (about 30 microseconds
per uncompressed ciphertext, measured), so the circuit is compiled for the gathered elements only, and
the server drops the others before concrete sees the row (``FHEServer(input_columns=...)``). What the
client encrypts is unchanged; the circuit's input size (in the client specs) is the number of elements
read.
"""

from __future__ import annotations

import numpy as np

from veilml.compiler.ir import Graph, Ops

__all__ = ["narrow_input"]


def narrow_input(graph: Graph) -> tuple[Graph, np.ndarray | None]:
    """``graph`` with its one input cut to the elements its gathers read, and their positions.

    Returns ``(graph, None)`` unchanged when the graph has several inputs, when an operation other than
    a gather reads the input, or when every element is read.
    """
    if len(graph.inputs) != 1:
        return graph, None
    (x,) = graph.inputs
    readers = [node for node in graph.nodes if x in node.src]
    if not readers or any(node.op is not Ops.GATHER for node in readers):
        return graph, None
    columns = np.unique(np.concatenate([np.asarray(node.arg, dtype=np.int64) for node in readers]))
    size = graph.nodes[x].size
    if len(columns) == size:
        return graph, None
    position = np.full(size, -1, dtype=np.int64)
    position[columns] = np.arange(len(columns))
    name, low, high = graph.nodes[x].arg
    nodes = []
    for i, node in enumerate(graph.nodes):
        if i == x:
            node = node.replace(arg=(name, np.asarray(low)[columns], np.asarray(high)[columns]), size=len(columns))
        elif x in node.src:  # a gather of the input: same elements, new positions
            node = node.replace(arg=tuple(int(p) for p in position[np.asarray(node.arg, dtype=np.int64)]))
        nodes.append(node)
    return Graph(tuple(nodes)), columns
