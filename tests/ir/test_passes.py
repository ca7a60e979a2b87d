"""The compile pipeline (veilml.compiler.passes): named passes in order, the spec checked around each
rewrite, and the interpreter's outputs unchanged by every pass. No concrete needed."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import graphs, random_inputs

from veilml.compiler import Configuration, Graph, GraphBuilder, IRError, Node, Ops, PassError, evaluate
from veilml.compiler.passes import PIPELINE, CompileState, Pass, run_passes
from veilml.errors import VeilmlError
from veilml.quantization import QuantizationRangeWarning, UniformQuantizer


def gathering_graph():
    """One input of 6 elements of which the gathers read 3: narrow_input cuts it."""
    g = GraphBuilder()
    x = g.input("x", [0] * 6, [7, 7, 7, 3, 3, 3])
    picked = g.gather(x, [4, 1, 4])
    shifted = g.add(picked, g.const([1, -2, 0]))
    g.output(g.lut(shifted, np.arange(12) % 5, offset=-2), "looked")
    g.output(g.cmp(g.gather(x, [5]), g.const([2]), "lt"), "flag")
    return g.build()


def two_input_graph():
    g = GraphBuilder()
    a = g.input("a", [0, 0], [3, 3])
    b = g.input("b", [-2], [2])
    g.output(g.sum(g.sub(g.gather(a, [1, 1]), b)))
    return g.build()


def fully_read_graph():
    """The input is read by a matmul: nothing to narrow."""
    g = GraphBuilder()
    x = g.input("x", [0, 0, 0], [5, 5, 5])
    g.output(g.round(g.matmul(x, [[1], [2], [3]]), 2))
    return g.build()


SMALL_GRAPHS = [gathering_graph, two_input_graph, fully_read_graph]


def _inputs(graph, n=20, seed=0):
    return random_inputs(graph, np.random.default_rng(seed), n)


def _assert_same(outputs, expected):
    assert len(outputs) == len(expected)
    for a, b in zip(outputs, expected):
        assert np.array_equal(a, b)


def test_pipeline_passes_are_named_in_order():
    assert [step.name for step in PIPELINE] == ["check_inputset", "narrow_input"]
    assert all(step.run.__doc__ for step in PIPELINE), "every pass says what it does"


def test_passes_run_in_order_and_are_observed():
    ran, seen = [], []

    def record(name):
        def run(graph, state):
            ran.append(name)
            return graph

        return Pass(name, run)

    graph = gathering_graph()
    passes = [record("first"), record("second"), record("third")]
    out = run_passes(graph, CompileState(Configuration(), []), passes, observe=lambda step, a, b: seen.append(step.name))
    assert out is graph
    assert ran == seen == ["first", "second", "third"]


def test_the_real_pipeline_runs_in_order():
    graph = gathering_graph()
    seen = []
    state = CompileState(Configuration(), _inputs(graph))
    run_passes(graph, state, observe=lambda step, before, after: seen.append((step.name, after is before)))
    assert seen == [("check_inputset", True), ("narrow_input", False)]
    assert state.columns.tolist() == [1, 4, 5]


def _rewire_gather(graph, state):
    """Rewires the first gather to read a node that comes after it: breaks 'sources must be earlier nodes'."""
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op is Ops.GATHER)
    nodes[i] = nodes[i].replace(src=(len(nodes) - 1,))
    return Graph(tuple(nodes))


def test_a_pass_that_breaks_the_spec_is_named():
    graph = gathering_graph()
    after = []
    passes = [*PIPELINE, Pass("rewire_gather", _rewire_gather), Pass("never_reached", lambda g, s: after.append(1) or g)]
    with pytest.raises(PassError, match="the 'rewire_gather' pass broke the IR spec") as caught:
        run_passes(graph, CompileState(Configuration(), _inputs(graph)), passes)
    assert not after
    assert isinstance(caught.value, IRError) and isinstance(caught.value, VeilmlError) and isinstance(caught.value, ValueError)


def test_a_pass_that_outputs_a_clear_value_is_named():
    def clear_output(graph, state):
        const = Node(Ops.CONST, (), np.array([1]), 1)
        return Graph((*graph.nodes, const, Node(Ops.OUTPUT, (len(graph.nodes),), "clear", 1)))

    graph = fully_read_graph()
    with pytest.raises(PassError, match="'clear_output' pass broke the IR spec.*outputs must be encrypted"):
        run_passes(graph, CompileState(Configuration(), _inputs(graph)), [Pass("clear_output", clear_output)])


def test_a_pass_that_returns_no_graph_is_named():
    graph = fully_read_graph()
    with pytest.raises(PassError, match="the 'forgetful' pass returned NoneType, not a Graph"):
        run_passes(graph, CompileState(Configuration(), []), [Pass("forgetful", lambda g, s: None)])


def test_the_spec_is_checked_before_the_first_pass():
    nodes = list(gathering_graph().nodes)
    nodes[1] = nodes[1].replace(arg=(9,), size=1)  # a gather index out of range
    ran = []
    with pytest.raises(IRError, match="gather index out of range") as caught:
        run_passes(Graph(tuple(nodes)), CompileState(Configuration(), []), [Pass("p", lambda g, s: ran.append(1) or g)])
    assert not isinstance(caught.value, PassError), "a bad input graph is the caller's, not a pass's"
    assert not ran


def test_check_inputset_refuses_bad_samples():
    graph = gathering_graph()
    with pytest.raises(ValueError, match="one \\(n_samples, size\\) array per graph input"):
        run_passes(graph, CompileState(Configuration(), [np.zeros(6, np.int64)]))
    with pytest.raises(ValueError, match="outside its declared range"):
        run_passes(graph, CompileState(Configuration(), [np.full((2, 6), 9)]))


def _check_each_pass(graph, inputs, configuration):
    """Run the pipeline one pass at a time; the interpreter agrees before and after each pass."""
    state = CompileState(configuration, inputs)
    for step in PIPELINE:
        before = state.batches or [np.asarray(x, dtype=np.int64) for x in inputs]
        expected = evaluate(graph, before)
        after = run_passes(graph, state, [step])
        _assert_same(evaluate(after, state.batches), expected)
        graph = after
    return graph, state


@pytest.mark.parametrize("make", SMALL_GRAPHS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("input_encryption", ["veilml", "concrete"])
def test_the_interpreter_agrees_before_and_after_each_pass(make, input_encryption):
    graph = make()
    final, state = _check_each_pass(graph, _inputs(graph), Configuration(input_encryption=input_encryption))
    narrowed = input_encryption == "veilml" and make is gathering_graph
    assert (state.columns is not None) == narrowed
    assert (final is graph) == (not narrowed)
    if narrowed:  # the narrowed graph computes on the kept columns of whole rows
        rows = _inputs(graph, seed=1)
        _assert_same(evaluate(final, [rows[0][:, state.columns]]), evaluate(graph, rows))


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), seed=st.integers(0, 2**16))
def test_the_interpreter_agrees_before_and_after_each_pass_on_random_graphs(graph, seed):
    inputs = random_inputs(graph, np.random.default_rng(seed), 10)
    _check_each_pass(graph, inputs, Configuration())


def test_quantization_warning_is_a_veilml_error_that_warnings_filters_still_match():
    assert issubclass(QuantizationRangeWarning, VeilmlError) and issubclass(QuantizationRangeWarning, UserWarning)
    quantizer = UniformQuantizer.from_range(0.0, 1.0, 4)
    with pytest.warns(QuantizationRangeWarning, match="clipped"):
        quantizer.quantize([2.0])
    for category in (QuantizationRangeWarning, UserWarning):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", category)
            quantizer.quantize([2.0])  # ignored, not raised
        with warnings.catch_warnings():
            warnings.simplefilter("error", category)
            with pytest.raises(QuantizationRangeWarning):
                quantizer.quantize([2.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantizer.quantize([2.0])
    assert [w.category for w in caught] == [QuantizationRangeWarning]


def test_compiler_exceptions_are_veilml_errors_with_their_builtin_bases():
    from veilml.compiler import GPUUnavailableError

    assert issubclass(IRError, VeilmlError) and issubclass(IRError, ValueError)
    assert issubclass(PassError, IRError)
    assert issubclass(GPUUnavailableError, VeilmlError) and issubclass(GPUUnavailableError, RuntimeError)


def test_the_removed_compress_input_ciphertexts_names_input_encryption():
    for make in (
        lambda: Configuration(compress_input_ciphertexts=False),
        lambda: Configuration().fork(compress_input_ciphertexts=True),
    ):
        with pytest.raises(TypeError, match="compress_input_ciphertexts.*input_encryption"):
            make()
    assert not hasattr(Configuration(), "compress_input_ciphertexts")
    with pytest.raises(TypeError):
        Configuration(1e-3)  # keyword-only: a removed field cannot shift positional arguments
