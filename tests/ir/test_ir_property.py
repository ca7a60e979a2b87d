"""For random small graphs and inputs: interpreter == deserialized interpreter == concrete simulation."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import graphs, random_inputs

from veilml.compiler import compile_graph, evaluate, graph_from_bytes, graph_to_bytes


@settings(
    max_examples=int(__import__("os").environ.get("N_EX", 25)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not __import__("os").environ.get("N_EX"),
)
@given(graph=graphs(), seed=st.integers(0, 2**16))
def test_interpreter_serialization_and_simulation_agree(graph, seed, test_config):
    rng = np.random.default_rng(seed)
    inputset = random_inputs(graph, rng, 30)
    check = random_inputs(graph, rng, 5)
    expected = evaluate(graph, check)
    for a, b in zip(expected, evaluate(graph_from_bytes(graph_to_bytes(graph)), check)):
        assert np.array_equal(a, b)
    compiled = compile_graph(graph, inputset, test_config)
    for a, b in zip(expected, compiled.simulate(check)):
        assert np.array_equal(a, b), f"\n{graph}\ninputs={check}\ninterpreter={a}\nsimulation={b}"
