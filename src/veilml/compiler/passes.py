"""The compile pipeline: a named, ordered list of small passes over the IR, with the spec checked around them.

:data:`PIPELINE` is what :func:`~veilml.compiler.lowering.compile_graph` runs on a graph before
concrete traces it, in this order:

1. ``check_inputset``: the inputset becomes one (n_samples, size) int64 array per graph input, and
   every sample runs through the interpreter, which refuses wrong shapes and values outside the
   declared input ranges. The graph is unchanged.
2. ``narrow_input``: with ``Configuration(input_encryption="veilml")`` (seeded inputs), the graph's
   one input is cut to the elements its gathers read (:mod:`veilml.compiler.narrowing`), and the
   inputset with it. The server drops the other elements before concrete sees a row.

A pass is a function ``(graph, state) -> graph``. It returns the same object when it leaves the graph
alone, and it writes anything else it finds into the :class:`CompileState` that the passes share
(tinygrad's ``ctx``). :func:`run_passes` checks the IR spec (:func:`~veilml.compiler.spec.verify_graph`)
on the graph it is given and again on every new graph a pass returns, so the spec holds before and
after each rewrite. If a pass's result breaks the spec, :class:`PassError` names the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veilml.compiler.configuration import Configuration
from veilml.compiler.interpreter import evaluate
from veilml.compiler.ir import Graph, IRError
from veilml.compiler.narrowing import narrow_input
from veilml.compiler.spec import verify_graph

__all__ = ["PIPELINE", "CompileState", "Pass", "PassError", "check_inputset", "narrow_seeded_input", "run_passes"]


class PassError(IRError):
    """A pass returned a graph that breaks the IR spec. This is a bug in that pass, not in the graph it was given."""


@dataclass
class CompileState:
    """What the passes read and write besides the graph: the settings, the inputset and what narrowing keeps."""

    configuration: Configuration
    inputset: Iterable[Sequence[np.ndarray]] | Sequence[np.ndarray]  # as given to compile_graph
    batches: list[np.ndarray] = field(default_factory=list)  # the checked inputset, one array per graph input
    columns: np.ndarray | None = None  # the positions of the input elements that the narrowed graph keeps


@dataclass(frozen=True)
class Pass:
    """One named step of the pipeline. ``run`` returns ``graph`` itself when it changes nothing."""

    name: str
    run: Callable[[Graph, CompileState], Graph]


def check_inputset(graph: Graph, state: CompileState) -> Graph:
    """Set ``state.batches`` from the inputset, with every sample checked by the interpreter (shapes and ranges)."""
    batches = [np.asarray(x, dtype=np.int64) for x in state.inputset]
    if len(batches) != len(graph.inputs) or any(b.ndim != 2 for b in batches):
        raise ValueError(f"inputset must be one (n_samples, size) array per graph input ({len(graph.inputs)})")
    evaluate(graph, batches)  # raises with a clear message on bad shapes or out-of-range values
    state.batches = batches
    return graph


def narrow_seeded_input(graph: Graph, state: CompileState) -> Graph:
    """With seeded inputs, cut the graph's input to the elements it reads, and the inputset with it.

    The server drops the other elements of a row before concrete sees it, so they need no circuit input.
    """
    if state.configuration.input_encryption != "veilml":
        return graph
    narrowed, columns = narrow_input(graph)
    if columns is not None:
        state.batches = [state.batches[0][:, columns]]
        state.columns = columns
    return narrowed


#: the passes of compile_graph, in the order they run
PIPELINE: tuple[Pass, ...] = (
    Pass("check_inputset", check_inputset),
    Pass("narrow_input", narrow_seeded_input),
)


def run_passes(
    graph: Graph,
    state: CompileState,
    passes: Sequence[Pass] = PIPELINE,
    *,
    observe: Callable[[Pass, Graph, Graph], Any] | None = None,
) -> Graph:
    """Run ``passes`` in order on ``graph`` and return the final graph.

    The spec is checked on ``graph`` first, which raises :class:`IRError` for a bad input graph. It is
    checked again on every new graph a pass returns, which raises :class:`PassError` naming the pass.
    ``observe(pass, before, after)``, if given, is called after each pass (for tests and debugging).
    """
    verify_graph(graph)
    for step in passes:
        result = step.run(graph, state)
        if not isinstance(result, Graph):
            raise PassError(f"the {step.name!r} pass returned {type(result).__name__}, not a Graph")
        if result is not graph:
            try:
                verify_graph(result)
            except Exception as error:  # whatever fails in the check of a pass's output is that pass's doing
                raise PassError(f"the {step.name!r} pass broke the IR spec: {error}") from error
        if observe is not None:
            observe(step, graph, result)
        graph = result
    return graph
