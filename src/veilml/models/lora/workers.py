"""Workers in this process, for tests, demos and single machines."""

from __future__ import annotations

from typing import Any

from veilml.linear import EncryptedLinearExecutor, LocalTransport, Worker
from veilml.linear.limits import DEFAULT_BACKEND
from veilml.models.lora.weights import RemoteWeights

__all__ = ["local_executor"]


def local_executor(weights: RemoteWeights, backend: str = DEFAULT_BACKEND, **worker_options: Any) -> EncryptedLinearExecutor:
    """An executor over one in-process :class:`Worker` holding ``weights`` (from :func:`~veilml.models.lora.weights.remote_linear_weights`).

    ``backend`` names the backend of both sides: ``"bfv"`` (exact and encrypted, the default),
    ``"bfv-seal"`` (the same protocol computed with SEAL), ``"concrete"``, ``"glwe"``, or ``"clear"`` (the exact integer protocol on plaintext, for experiments
    in one process; never a default). ``worker_options`` go to
    :class:`Worker` (``weight_bits``, ``input_bits``...).
    """
    worker = Worker(
        weights={name: weight for name, (weight, _) in weights.items()},
        biases={name: bias for name, (_, bias) in weights.items() if bias is not None},
        backend=backend,
        **worker_options,
    )
    return EncryptedLinearExecutor(LocalTransport(worker), backend=backend)
