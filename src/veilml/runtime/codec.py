"""What the client does around the circuit, as plain data: floats in, integers to encrypt; integers out, predictions.

A :class:`ClientCodec` is everything a data owner needs besides concrete's client specs:

- before encryption: the input quantizer and the input encoding (thermometer or identity);
- after decryption: the clear integer combination (digits to scores), dequantization, the public
  bias, then the model's post-transform (identity, sigmoid, softmax, or the renormalized
  frequencies of forests) and the class labels.

It holds no graph, no tree, no threshold: a client bundle reveals the input grid and the output
scale, nothing of the model in between. It is frozen and saved as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..compiler import InputEncoding
from ..quantization import UniformQuantizer

__all__ = ["ClientCodec", "OutputSpec", "finish_scores"]

Task = Literal["classification", "regression"]
PostTransform = Literal["identity", "sigmoid", "softmax"]


@dataclass(frozen=True)
class OutputSpec:
    """How dequantized scores become what the model's library returns.

    ``post_transform``: ``"identity"`` (regression values, or a forest's averaged leaf frequencies,
    renormalized), ``"sigmoid"`` (a margin: binary classification or logistic regression),
    ``"softmax"`` (one margin per class). ``classes``: the labels, for classifiers.
    """

    task: Task
    post_transform: PostTransform = "identity"
    classes: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.post_transform not in ("identity", "sigmoid", "softmax"):
            raise ValueError(f"unknown post_transform {self.post_transform!r}")
        if self.task == "classification" and not self.classes:
            raise ValueError("a classification output needs its classes")

    def to_dict(self) -> dict[str, Any]:
        classes = None if self.classes is None else np.asarray(self.classes).tolist()
        return {"task": self.task, "post_transform": self.post_transform, "classes": classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputSpec:
        classes = d.get("classes")
        return cls(d["task"], d.get("post_transform", "identity"), None if classes is None else tuple(classes))


def finish_scores(raw: np.ndarray, task: str, post_transform: str) -> np.ndarray:
    """Probabilities (classification, n × classes) or values (regression, n × outputs) of raw scores."""
    raw = np.asarray(raw, dtype=np.float64)
    if post_transform == "sigmoid":
        p = np.exp(-np.logaddexp(0.0, -raw))
        return np.hstack([1.0 - p, p]) if task == "classification" else p
    if post_transform == "softmax":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if task == "regression":
        return raw
    # averaged leaf frequencies (forests, single trees): quantized, so renormalized
    scores = np.maximum(raw, 0.0)
    totals = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / scores.shape[1])
    return np.divide(scores, totals, out=uniform, where=totals > 0)


def _array(values: Any) -> list[Any] | None:
    return None if values is None else np.asarray(values).tolist()


@dataclass(frozen=True, eq=False)
class ClientCodec:
    """Quantize and encode before encryption; combine, dequantize and finish after decryption."""

    input_quantizer: UniformQuantizer
    encoding: InputEncoding
    output_quantizer: UniformQuantizer
    output_bias: np.ndarray | None = None
    output_combine: np.ndarray | None = None
    output: OutputSpec | None = None
    warn_on_clip: bool = True

    @property
    def n_features(self) -> int:
        return self.encoding.n_features

    def encode(self, X: np.ndarray) -> np.ndarray:
        """The integers to encrypt for float rows ``X``: quantized, then encoded."""
        return self.encoding.encode(self.input_quantizer.quantize(X, warn=self.warn_on_clip))

    def decode(self, integers: np.ndarray) -> np.ndarray:
        """Raw float scores of decrypted integers."""
        integers = np.asarray(integers, dtype=np.int64)
        if self.output_combine is not None:
            integers = integers @ self.output_combine
        values = self.output_quantizer.dequantize(integers)
        return values if self.output_bias is None else values + self.output_bias

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities (classifiers) or predicted values (regressors) of raw scores."""
        if self.output is None:
            return raw
        return finish_scores(raw, self.output.task, self.output.post_transform)

    def predict(self, integers: np.ndarray) -> np.ndarray:
        """Labels (classifiers) or values (regressors, 1-D for one output) of decrypted integers."""
        finished = self.finish(self.decode(integers))
        if self.output is None or self.output.task == "regression":
            return finished[:, 0] if finished.ndim == 2 and finished.shape[1] == 1 else finished
        return np.asarray(self.output.classes)[np.argmax(finished, axis=1)]

    # ----------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        return {
            "input_quantizer": self.input_quantizer.to_dict(),
            "encoding": self.encoding.to_dict(),
            "output_quantizer": self.output_quantizer.to_dict(),
            "output_bias": _array(self.output_bias),
            "output_combine": _array(self.output_combine),
            "output": None if self.output is None else self.output.to_dict(),
            "warn_on_clip": self.warn_on_clip,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientCodec:
        try:
            combine = d.get("output_combine")
            bias = d.get("output_bias")
            return cls(
                UniformQuantizer.from_dict(d["input_quantizer"]),
                InputEncoding.from_dict(d["encoding"]),
                UniformQuantizer.from_dict(d["output_quantizer"]),
                None if bias is None else np.asarray(bias, dtype=np.float64),
                None if combine is None else np.asarray(combine, dtype=np.int64),
                None if d.get("output") is None else OutputSpec.from_dict(d["output"]),
                bool(d.get("warn_on_clip", True)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a veilml client codec ({type(error).__name__}: {error}); save the model again") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ClientCodec:
        try:
            document = json.loads(text)
        except ValueError as error:
            raise ValueError(f"not a veilml client codec: invalid JSON ({error})") from None
        if not isinstance(document, dict):
            raise ValueError("not a veilml client codec: expected a JSON object")
        return cls.from_dict(document)
