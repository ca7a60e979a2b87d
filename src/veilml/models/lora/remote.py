"""Linear layers computed by remote workers, as drop-in torch modules.

:class:`RemoteLinear` replaces an ``nn.Linear``, a transformers ``Conv1D`` or the ``base_layer`` of a
PEFT LoRA layer. Its forward sends ``x`` to the workers (``x @ W + b``), its backward sends the
output gradient (``g @ W.T``); the frozen weight never gets a gradient and is not held locally.
Everything around it (the LoRA path, norms, softmax, loss, optimizer) stays in the client's torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .weights import DEFAULT_REMOTE_PATTERNS, find_remote_layers

__all__ = ["RemoteLinear", "outsource_linear_layers", "remote_layer_names"]

#: Rows sent in one request (the protocol's Worker accepts 4096 by default).
DEFAULT_MAX_ROWS = 4096


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
        executor: an :class:`~veilml.runtime.linear.protocol.EncryptedLinearExecutor` serving ``name``.
        in_features / out_features: the layer's shape; checked against what the worker publishes.
        max_rows: most rows per request; larger inputs are sent in several requests (rows are
            quantized one by one, so the split changes nothing in the result).
    """

    def __init__(self, name: str, executor: Any, in_features: int, out_features: int, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        super().__init__()
        info = executor.layer(name)  # KeyError naming the served layers when it is not served
        if (info.d_in, info.d_out) != (in_features, out_features):
            raise ValueError(
                f"layer {name!r} is ({in_features} -> {out_features}) here but the worker serves "
                f"({info.d_in} -> {info.d_out}); build the worker from the same model"
            )
        if max_rows < 1:
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
        width_in, width_out = (self.in_features, self.out_features) if direction == "forward" else (self.out_features, self.in_features)
        # C-contiguous float64 rows at the boundary: concrete misreads strided arrays
        rows = np.ascontiguousarray(tensor.detach().to(device="cpu", dtype=torch.float64).reshape(-1, width_in).numpy())
        run = self.executor.forward if direction == "forward" else self.executor.backward
        # at least one call, so that zero rows come back as a (0, width_out) array from the executor
        starts = range(0, max(rows.shape[0], 1), self.max_rows)
        chunks = [run(self.name, np.ascontiguousarray(rows[i : i + self.max_rows])) for i in starts]
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        result = torch.from_numpy(np.ascontiguousarray(out)).to(device=tensor.device, dtype=tensor.dtype)
        return result.reshape(*tensor.shape[:-1], width_out)

    def extra_repr(self) -> str:
        backend = getattr(getattr(self.executor, "backend", None), "name", "?")
        return f"name={self.name!r}, in_features={self.in_features}, out_features={self.out_features}, backend={backend}"


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return tuple(module.weight.shape)  # transformers Conv1D: (d_in, d_out)


def remote_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` already computed remotely."""
    return [site.name for site in find_remote_layers(model, ["*"]) if isinstance(site.module, RemoteLinear)]


def outsource_linear_layers(
    model: nn.Module,
    executor: Any,
    patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[str]:
    """Replace, in place, the linear layers matching ``patterns`` by :class:`RemoteLinear` on ``executor``.

    For a PEFT model the LoRA layer's ``base_layer`` is replaced, so ``lora_A``/``lora_B`` stay local
    and trainable. The replaced weights and biases are dropped from the model and their storage
    freed (unless another local module shares them). Apply LoRA *before* outsourcing: PEFT does not
    recognise a :class:`RemoteLinear` as a target. Layers already remote are left as they are.

    Returns the names of the layers outsourced by this call. Raises before changing anything when
    no layer matches or when the executor does not serve a matched layer.
    """
    sites = [site for site in find_remote_layers(model, patterns) if not isinstance(site.module, RemoteLinear)]
    if not sites and not remote_layer_names(model):
        raise ValueError(f"no linear layer of {type(model).__name__} matches the patterns {list(patterns)}")
    missing = [site.name for site in sites if site.name not in executor.infos]
    if missing:
        raise ValueError(
            f"the workers do not serve {missing}; they serve {sorted(executor.infos)}. "
            "Build the workers from remote_linear_weights(model, patterns) with the same patterns"
        )
    replacements = [(site, RemoteLinear(site.name, executor, *_shape(site.module), max_rows=max_rows)) for site in sites]
    for site, remote in replacements:
        setattr(site.holder, site.attr, remote)
    kept = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    for site, _ in replacements:
        for tensor in [*site.module.parameters(), *site.module.buffers()]:
            if id(tensor) not in kept:
                tensor.data = torch.empty(0, dtype=tensor.dtype)
    return [site.name for site, _ in replacements]
