"""Which linear layers leave the client, and their frozen weights in the worker's orientation.

A *remote layer* is a plain ``nn.Linear`` or a transformers ``Conv1D`` whose module name matches one
of the patterns. Patterns are shell-style wildcards (:func:`fnmatch.fnmatchcase`, case-sensitive)
matched against the whole module name, where ``*`` also crosses dots: ``"*.attn.c_attn"`` matches
``transformer.h.0.attn.c_attn``.

Names are those of the plain transformers model, also when the model is wrapped by PEFT: for a PEFT
model the ``base_model.model.`` prefix and the ``.base_layer`` suffix are dropped, so the worker's
layer names (built from the plain model) and the client's (built from the PEFT model) agree.

Weights are returned oriented so that the layer computes ``x @ W + b``: ``W`` has shape
``(d_in, d_out)``. GPT-2's ``Conv1D`` stores its weight that way already; ``nn.Linear`` stores
``(d_out, d_in)`` and is transposed.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from veilml.models.lora.remote_linear import RemoteLinear

__all__ = [
    "DEFAULT_REMOTE_PATTERNS",
    "RemoteWeights",
    "find_remote_layers",
    "layer_weights",
    "load_remote_weights",
    "remote_linear_weights",
    "save_remote_weights",
    "unwrap_peft",
]

#: Attention and MLP projections of GPT-2 (``Conv1D``) and Llama-style models (``nn.Linear``).
#: Embeddings, norms and the LM head are never matched: they stay with the client.
DEFAULT_REMOTE_PATTERNS: tuple[str, ...] = (
    "*.attn.c_attn",
    "*.attn.c_proj",
    "*.mlp.c_fc",
    "*.mlp.c_proj",
    "*.q_proj",
    "*.k_proj",
    "*.v_proj",
    "*.o_proj",
    "*.gate_proj",
    "*.up_proj",
    "*.down_proj",
)

#: layer name -> (weight (d_in, d_out) float32, bias (d_out,) float32 or None)
RemoteWeights = dict[str, tuple[np.ndarray, "np.ndarray | None"]]

_FORMAT = "veilml.remote_linear"
_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class RemoteLayerSite:
    """Where a remote layer sits: ``getattr(holder, attr) is module``."""

    name: str
    holder: nn.Module
    attr: str
    module: nn.Module


def _loaded_type(module_name: str, attr: str) -> type | None:
    """A class from a library only if that library is already imported (never import it here)."""
    module = sys.modules.get(module_name)
    return getattr(module, attr, None) if module is not None else None


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The plain transformers model inside a ``PeftModel`` (or a PEFT tuner), else ``model`` itself."""
    peft_model = _loaded_type("peft", "PeftModel")
    if peft_model is not None and isinstance(model, peft_model):
        return model.get_base_model()
    base_tuner = _loaded_type("peft.tuners.tuners_utils", "BaseTuner")
    if base_tuner is not None and isinstance(model, base_tuner):
        return model.model
    return model


def _is_linear(module: nn.Module | None) -> bool:
    """A plain ``nn.Linear``, a transformers ``Conv1D``, or one already outsourced (a :class:`RemoteLinear`)."""
    conv1d = _loaded_type("transformers.pytorch_utils", "Conv1D")
    return isinstance(module, (nn.Linear, RemoteLinear)) or (conv1d is not None and isinstance(module, conv1d))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _check_patterns(patterns: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise TypeError(
            f"patterns must be a sequence of wildcard patterns, got the single string {patterns!r}; use [{patterns!r}]"
        )
    return tuple(patterns)


def find_remote_layers(model: nn.Module, patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS) -> Iterator[RemoteLayerSite]:
    """Every linear layer of ``model`` whose (PEFT-free) name matches ``patterns``.

    For a layer wrapped by a PEFT tuner layer (LoRA), the site is the tuner layer's ``base_layer``, so
    that replacing it keeps the adapter path; the tuner layer's own children (``lora_A``...) are
    never matched.
    """
    patterns = _check_patterns(patterns)
    root = unwrap_peft(model)
    tuner_layer = _loaded_type("peft.tuners.tuners_utils", "BaseTunerLayer")
    inside: str | None = None  # name prefix of the tuner layer whose children are skipped
    for name, module in root.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if tuner_layer is not None and isinstance(module, tuner_layer):
            inside = name + "."
            holder = module
            while isinstance(getattr(holder, "base_layer", None), tuner_layer):  # stacked tuners: the innermost holds the layer
                holder = holder.base_layer
            if _is_linear(getattr(holder, "base_layer", None)) and _matches(name, patterns):
                yield RemoteLayerSite(name, holder, "base_layer", holder.base_layer)
        elif name and _is_linear(module) and _matches(name, patterns):
            parent_name, _, attr = name.rpartition(".")
            yield RemoteLayerSite(name, root.get_submodule(parent_name), attr, module)


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_meta:
        raise ValueError("the weight is on the meta device (not loaded); load the model with its weights")
    return np.ascontiguousarray(tensor.detach().to(device="cpu", dtype=torch.float32).numpy())


def layer_weights(module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    """A linear layer's weight ``(d_in, d_out)`` and bias (or None) as float32 arrays (``nn.Linear`` transposed)."""
    weight = _as_numpy(module.weight)
    if isinstance(module, nn.Linear):  # stored (d_out, d_in)
        weight = np.ascontiguousarray(weight.T)
    return weight, None if module.bias is None else _as_numpy(module.bias)


def remote_linear_weights(model: nn.Module, patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS) -> RemoteWeights:
    """The frozen weights of the layers to outsource: ``{name: (W (d_in, d_out), bias or None)}``.

    Works on a plain transformers model or on a PEFT model (the base layer's weight is used, never
    the adapters). Raises ValueError when nothing matches or when a layer was already outsourced.
    """
    sites = list(find_remote_layers(model, patterns))
    remote = [site.name for site in sites if isinstance(site.module, RemoteLinear)]
    if remote:
        raise ValueError(
            f"layers {remote} are already outsourced and have no weights here; "
            "read the weights from the model before calling outsource_linear_layers"
        )
    merged = [site.name for site in sites if getattr(site.holder, "merged", False)]
    if merged:  # the base weight then contains the adapters, which must not reach a worker
        raise ValueError(f"adapters are merged into the base weights of {merged}; call model.unmerge_adapter() first")
    weights: RemoteWeights = {site.name: layer_weights(site.module) for site in sites}
    if not weights:
        raise ValueError(f"no linear layer of {type(model).__name__} matches the patterns {list(patterns)}")
    return weights


def save_remote_weights(
    weights: RemoteWeights | nn.Module, path: str | Path, patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS
) -> Path:
    """Write the worker's weights to a ``.safetensors`` file for ``veilml worker --weights PATH``.

    ``weights`` is a model (plain transformers or PEFT: its layers matching ``patterns`` are written, as
    :func:`remote_linear_weights` reads them) or that function's output. Keys are ``NAME.weight``/``NAME.bias``;
    only the frozen projections are written (no embeddings, norms, LM head or adapters). Returns ``path``.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"remote weights are written as .safetensors, got {path.name!r}")
    if isinstance(weights, nn.Module):
        weights = remote_linear_weights(weights, patterns)
    tensors: dict[str, np.ndarray] = {}
    for name, (weight, bias) in weights.items():
        weight = np.asarray(weight)
        if weight.ndim != 2:
            raise ValueError(f"layer {name!r}: a weight is 2-D (d_in, d_out), got shape {weight.shape}")
        tensors[f"{name}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
            if bias.shape[0] != weight.shape[1]:
                raise ValueError(f"layer {name!r}: bias has {bias.shape[0]} values for {weight.shape[1]} outputs")
            tensors[f"{name}.bias"] = bias
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": _FORMAT, "version": _FORMAT_VERSION, "layout": "d_in,d_out"})
    return path


def _read_safetensors(path: Path, patterns: Sequence[str]) -> RemoteWeights:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(
                f"{path} was not written by save_remote_weights (no {_FORMAT!r} metadata); "
                "pass the model's directory instead of one of its weight files"
            )
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    weights: RemoteWeights = {}
    for key, weight in tensors.items():
        name, _, kind = key.rpartition(".")
        if kind == "weight" and _matches(name, patterns):
            weights[name] = (weight, tensors.get(f"{name}.bias"))
    return weights


def _read_model(path: Path, patterns: Sequence[str]) -> RemoteWeights:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as error:  # pragma: no cover - the lora extra installs it
        raise ImportError("loading a model directory needs transformers: pip install 'veilml[lora]'") from error
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    elif not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a transformers model directory (no config.json)")
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return remote_linear_weights(model, patterns)


def load_remote_weights(path: str | Path, patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS) -> RemoteWeights:
    """The worker's weights from a transformers model directory, a ``.gguf`` file, or a ``.safetensors``
    file written by :func:`save_remote_weights`; only layers matching ``patterns`` are kept.
    Never touches the network (``local_files_only``).
    """
    patterns = _check_patterns(patterns)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model directory or weight file at {path}")
    weights = _read_safetensors(path, patterns) if path.suffix == ".safetensors" else _read_model(path, patterns)
    if not weights:
        raise ValueError(f"no layer in {path} matches the patterns {list(patterns)}")
    return weights
