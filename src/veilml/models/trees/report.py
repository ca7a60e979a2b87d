"""``model.fhe_report()``: where the time of one encrypted row goes, per stage of the lowering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veilml.compiler.cost import CostModel, graph_cost

__all__ = ["FHEReport", "fhe_report"]


@dataclass(frozen=True)
class FHEReport:
    """The lowering's strategy per stage, the circuit's costs and the estimated split of one row's time.

    ``pbs_by_precision``, ``complexity`` and key sizes are concrete's figures once the model is
    compiled (``None`` before); the counts of inputs and outputs, the bytes on the wire and the
    seconds come from the IR's cost function (:mod:`veilml.compiler.cost`) and are estimates.
    """

    stages: dict[str, str]
    inputs_per_row: int
    outputs_per_row: int
    pbs_by_precision: dict[int, int]
    complexity: float | None
    evaluation_key_bytes: int | None
    compressed_evaluation_key_bytes: int | None
    bytes_up_per_row: int
    bytes_down_per_row: int
    estimate: dict[str, float]
    inputs_read_per_row: int | None = None  # of the inputs, those the circuit reads (None: all)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        e = self.estimate
        lines = [f"  {stage}: {how}" for stage, how in self.stages.items()]
        pbs = ", ".join(f"{p}-bit: {n}" for p, n in sorted(self.pbs_by_precision.items())) or "none"
        lines.append(f"  PBS per row: {sum(self.pbs_by_precision.values())} ({pbs})")
        if self.complexity is not None:
            lines.append(f"  complexity: {self.complexity:.3g}")
        if self.evaluation_key_bytes is not None:
            lines.append(
                f"  evaluation keys: {self.evaluation_key_bytes / 2**20:.1f} MiB "
                f"({(self.compressed_evaluation_key_bytes or 0) / 2**20:.1f} MiB compressed)"
            )
        read = "" if self.inputs_read_per_row is None else f"; the circuit reads {self.inputs_read_per_row}"
        lines.append(
            f"  per row: {self.inputs_per_row} ciphertexts up (~{self.bytes_up_per_row / 2**10:.1f} KiB{read}), "
            f"{self.outputs_per_row} down (~{self.bytes_down_per_row / 2**10:.1f} KiB)"
        )
        lines.append(
            f"  estimated time per row, one core: client {e['client_s'] * 1e3:.0f} ms (encrypt "
            f"{e['client_encrypt_s'] * 1e3:.0f}, decrypt {e['client_decrypt_s'] * 1e3:.0f}), server "
            f"{e['server_s'] * 1e3:.0f} ms (call {e['server_call_s'] * 1e3:.0f}, inputs {e['server_inputs_s'] * 1e3:.0f}, "
            f"lookups {e['server_pbs_s'] * 1e3:.0f})"
        )
        return "FHE report\n" + "\n".join(lines)


def fhe_report(graph: Any, stages: dict[str, str], compiled_report: Any = None, cost_model: CostModel | None = None) -> FHEReport:
    """The report of ``graph`` lowered with ``stages``; concrete's figures from ``compiled_report`` when given."""
    cost = graph_cost(graph)
    estimate = cost.estimate(cost_model)
    r = compiled_report
    return FHEReport(
        stages=dict(stages),
        inputs_per_row=cost.inputs,
        outputs_per_row=cost.outputs,
        pbs_by_precision=dict(r.pbs_by_precision) if r is not None else cost.pbs_by_precision,
        complexity=None if r is None else float(r.complexity),
        evaluation_key_bytes=None if r is None else int(r.evaluation_key_bytes),
        compressed_evaluation_key_bytes=None if r is None else int(r.compressed_evaluation_key_bytes),
        bytes_up_per_row=int(estimate["bytes_up"]),
        bytes_down_per_row=int(estimate["bytes_down"]),
        estimate=estimate,
        inputs_read_per_row=cost.read_inputs,
    )
