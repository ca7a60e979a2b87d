"""Random small IR graphs and inputs for property tests (Hypothesis), shared by the tests of tests/ir."""

import numpy as np
from hypothesis import strategies as st

from veilml.compiler import Graph, GraphBuilder, IRError, Node, Ops, infer_ranges

MAX_BITS = 6  # keeps every lookup cheap to compile


@st.composite
def graphs(draw):
    g = GraphBuilder()
    n_inputs = draw(st.integers(1, 2))
    encrypted = []
    for k in range(n_inputs):
        size = draw(st.integers(1, 4))
        low = draw(st.integers(-4, 3))
        high = low + draw(st.integers(1, 12))
        encrypted.append(g.input(f"x{k}", [low] * size, [high] * size))
    for _ in range(draw(st.integers(1, 6))):
        a = draw(st.sampled_from(encrypted))
        size = g.size(a)
        kind = draw(st.sampled_from(["gather", "add_c", "sub_c", "mul", "add", "sub", "matmul", "cmp", "lut", "round", "sum"]))
        consts = st.lists(st.integers(-3, 3), min_size=size, max_size=size)
        if kind == "gather":
            node = g.gather(a, draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=5)))
        elif kind in ("add_c", "sub_c"):
            c = g.const(draw(consts))
            node = g.add(a, c) if kind == "add_c" else g.sub(c, a)
        elif kind == "mul":
            node = g.mul(a, g.const(draw(consts)))
        elif kind in ("add", "sub"):
            same = [e for e in encrypted if g.size(e) in (1, size)]
            b = draw(st.sampled_from(same))
            node = g.add(a, b) if kind == "add" else g.sub(a, b)
        elif kind == "matmul":
            cols = draw(st.integers(1, 3))
            m = draw(st.lists(st.integers(-2, 2), min_size=size * cols, max_size=size * cols))
            node = g.matmul(a, np.array(m).reshape(size, cols))
        elif kind == "cmp":
            node = g.cmp(a, g.const(draw(consts)), draw(st.sampled_from(["le", "lt", "ge", "gt", "eq", "ne"])))
        elif kind == "lut":
            table = draw(st.lists(st.integers(-6, 6), min_size=1, max_size=16))
            node = g.lut(a, table, offset=draw(st.integers(-6, 3)))
        elif kind == "round":
            node = g.round(a, draw(st.integers(1, 2)), draw(st.sampled_from(["round", "truncate"])))
        else:
            node = g.sum(a)
        try:
            too_wide = infer_ranges(_graph_of(g))[node].bit_width > MAX_BITS
        except IRError:  # for example rounding away every bit of a value
            too_wide = True
        if too_wide:
            g.nodes.pop()  # too wide for a quick test: drop it
            continue
        encrypted.append(node)
    outputs = draw(st.lists(st.sampled_from(encrypted[n_inputs:] or encrypted), min_size=1, max_size=2, unique=True))
    live = _graph_of(g, outputs).live()
    outputs += [i for i in range(n_inputs) if i not in live]  # every input reaches an output
    for k, node in enumerate(outputs):
        g.output(node, f"y{k}")
    return g.build()


def _graph_of(builder, outputs=()):
    return Graph(tuple(builder.nodes) + tuple(Node(Ops.OUTPUT, (o,), "y", 1) for o in outputs))


def random_inputs(graph, rng, n):
    out = []
    for i in graph.inputs:
        _, low, high = graph.nodes[i].arg
        out.append(rng.integers(low, high + 1, size=(n, len(low))))
    return out
