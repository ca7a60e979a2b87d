"""Sending a model's linear layers to remote workers: each is replaced by a :class:`RemoteLinear`.

:func:`outsource_linear_layers` does the replacing, :func:`remote_layer_names` finds the replaced
layers again. The layer itself is :mod:`.remote_linear`; which layers match is :mod:`.weights`.

Before it replaces anything, :func:`outsource_linear_layers` has the executor compare each worker's published
fingerprint with the fingerprint of the model's own weights
(:meth:`~veilml.linear.executor.EncryptedLinearExecutor.check_base_weights`): a worker started with another model
is refused before a single activation leaves the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from veilml.models.lora.remote_linear import RemoteLinear
from veilml.models.lora.weights import DEFAULT_REMOTE_PATTERNS, find_remote_layers, layer_weights

__all__ = ["RemoteLinear", "check_base_weights", "outsource_linear_layers", "remote_layer_names"]

logger = logging.getLogger("veilml.lora")


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return tuple(module.weight.shape)  # transformers Conv1D: (d_in, d_out)


def remote_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` already computed remotely."""
    return [site.name for site in find_remote_layers(model, ["*"]) if isinstance(site.module, RemoteLinear)]


def check_base_weights(model: nn.Module, executor: Any) -> None:
    """Raise :class:`~veilml.linear.errors.BaseWeightsMismatchError` unless every worker of ``executor`` serves the
    weights ``model`` holds (same fingerprint); sends nothing to the workers. A stand-in executor without the check,
    or weights not loaded (meta device), are let through: there is nothing to compare."""
    check = getattr(executor, "check_base_weights", None)
    if check is None:
        return
    sites = [site for site in find_remote_layers(model, ["*"]) if site.name in executor.infos]
    local = [site for site in sites if not isinstance(site.module, RemoteLinear)]
    if any(site.module.weight.is_meta for site in local):
        logger.warning("the base weights are not loaded (meta device): the workers' weights are not checked")
        return
    merged = [site.name for site in local if getattr(site.holder, "merged", False)]
    if merged:  # the base weight then holds the adapters too: no worker serves that
        raise ValueError(f"adapters are merged into the base weights of {merged}; call model.unmerge_adapter() first")
    weights = {site.name: layer_weights(site.module) for site in local}
    check(weights, unavailable=[site.name for site in sites if isinstance(site.module, RemoteLinear)])


def outsource_linear_layers(
    model: nn.Module,
    executor: Any,
    patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS,
    *,
    max_rows: int | None = None,
) -> list[str]:
    """Replace, in place, the linear layers matching ``patterns`` by :class:`RemoteLinear` on ``executor``.

    For a PEFT model the LoRA layer's ``base_layer`` is replaced, so ``lora_A``/``lora_B`` stay local
    and trainable. The replaced weights and biases are dropped from the model and their storage
    freed (unless another local module shares them). Apply LoRA *before* outsourcing: PEFT does not
    recognise a :class:`RemoteLinear` as a target. Layers already remote are left as they are.

    Returns the names of the layers outsourced by this call. Raises before changing anything when
    no layer matches, when the executor does not serve a matched layer, or when a worker serves other base
    weights than the model's (:func:`check_base_weights`).
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
    check_base_weights(model, executor)
    replacements = [(site, RemoteLinear(site.name, executor, *_shape(site.module), max_rows=max_rows)) for site in sites]
    for site, remote in replacements:
        setattr(site.holder, site.attr, remote)
    kept = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    for site, _ in replacements:
        for tensor in [*site.module.parameters(), *site.module.buffers()]:
            if id(tensor) not in kept:
                tensor.data = torch.empty(0, dtype=tensor.dtype)
    return [site.name for site, _ in replacements]
