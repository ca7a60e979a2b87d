"""A linear layer computed by remote workers, as a drop-in torch module.

:class:`RemoteLinear` replaces an ``nn.Linear``, a transformers ``Conv1D`` or the ``base_layer`` of a
PEFT LoRA layer (:mod:`.remote` does the replacing). Its forward sends ``x`` to the workers
(``x @ W + b``), its backward sends the output gradient (``g @ W.T``); the frozen weight never gets a
gradient and is not held locally. Everything around it (the LoRA path, norms, softmax, loss,
optimizer) stays in the client's torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["RemoteLinear"]


class _RemoteMatmul(torch.autograd.Function):
    """``y = x @ W + b`` by the workers; ``dx = g @ W.T`` by the workers; no gradient for ``W`` or ``b``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: RemoteLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer.remote("forward", x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return ctx.layer.remote("backward", grad), None


class RemoteLinear(nn.Module):
    """A frozen linear layer whose weight lives on a worker; holds no parameter and no buffer.

    Args:
        name: the layer's name on the workers (see :mod:`.weights` for the naming rule).
        executor: an :class:`~veilml.linear.executor.EncryptedLinearExecutor` serving ``name``.
        in_features / out_features: the layer's shape; checked against what the worker publishes.
        max_rows: most rows per call to the executor, or None for all of them at once. The executor
            itself sends at most the worker's published ``max_rows`` per request either way (rows
            are quantized one by one, so no split changes the result).
    """

    def __init__(self, name: str, executor: Any, in_features: int, out_features: int, max_rows: int | None = None) -> None:
        super().__init__()
        info = executor.layer(name)  # KeyError naming the served layers when it is not served
        if (info.d_in, info.d_out) != (in_features, out_features):
            raise ValueError(
                f"layer {name!r} is ({in_features} -> {out_features}) here but the worker serves "
                f"({info.d_in} -> {info.d_out}); build the worker from the same model"
            )
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.name = name
        self.executor = executor
        self.in_features = in_features
        self.out_features = out_features
        self.max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"layer {self.name!r} takes {self.in_features} features, got input of shape {tuple(x.shape)}")
        return _RemoteMatmul.apply(x, self)

    def remote(self, direction: str, tensor: torch.Tensor) -> torch.Tensor:
        """Run ``tensor``'s rows through the workers (``"forward"``: ``x @ W + b``; ``"backward"``: ``g @ W.T``)."""
        width_in, width_out = (
            (self.in_features, self.out_features) if direction == "forward" else (self.out_features, self.in_features)
        )
        # C-contiguous float64 rows at the boundary: concrete misreads strided arrays
        rows = np.ascontiguousarray(tensor.detach().to(device="cpu", dtype=torch.float64).reshape(-1, width_in).numpy())
        run = self.executor.forward if direction == "forward" else self.executor.backward
        # at least one call, so that zero rows come back as a (0, width_out) array from the executor
        step = self.max_rows or max(rows.shape[0], 1)
        chunks = [run(self.name, np.ascontiguousarray(rows[i : i + step])) for i in range(0, max(rows.shape[0], 1), step)]
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        result = torch.from_numpy(np.ascontiguousarray(out)).to(device=tensor.device, dtype=tensor.dtype)
        return result.reshape(*tensor.shape[:-1], width_out)

    def extra_repr(self) -> str:
        backend = getattr(getattr(self.executor, "backend", None), "name", "?")
        return f"name={self.name!r}, in_features={self.in_features}, out_features={self.out_features}, backend={backend}"
