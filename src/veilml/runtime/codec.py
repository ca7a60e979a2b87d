"""What the client does around the circuit, as plain data: floats in, integers to encrypt; integers out, predictions.

A :class:`ClientCodec` is everything a data owner needs besides concrete's client specs:

- before encryption: the input quantizer and the input encoding (thermometer or identity);
- after decryption: the clear integer combination (digits to scores), dequantization, the public
  bias, then the model's post-transform (identity, sigmoid, softmax, or the renormalized
  frequencies of forests) and the class labels.

It holds no graph, no tree, no threshold: a client bundle reveals the input grid and the output
scale (and the column names the model was fitted on, if any), nothing of the model in between.
It is frozen and saved as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from veilml.compiler import InputEncoding
from veilml.quantization import UniformQuantizer
from veilml.runtime.data_checks import check_feature_names, check_X

__all__ = ["MAX_FEATURE_NAME_LENGTH", "ClientCodec", "OutputSpec", "finish_scores"]

#: the longest feature name a codec reads from JSON (a client bundle can come from an untrusted server)
MAX_FEATURE_NAME_LENGTH = 512

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


def _read_feature_names(value: Any, n_features: int) -> tuple[str, ...] | None:
    """Feature names read from JSON, bounded: at most ``n_features`` strings of bounded length."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > n_features:
        raise ValueError(f"feature_names must be a list of at most {n_features} strings (one per feature)")
    for name in value:
        if not isinstance(name, str) or len(name) > MAX_FEATURE_NAME_LENGTH:
            raise ValueError(f"feature_names must be strings of at most {MAX_FEATURE_NAME_LENGTH} characters")
    return tuple(value)


@dataclass(frozen=True, eq=False)
class ClientCodec:
    """Quantize and encode before encryption; combine, dequantize and finish after decryption.

    ``feature_names``: the column names the model was fitted on (a frame with string column
    names), or None; :meth:`check_rows` refuses a frame whose columns differ from them, as the
    estimator does, so that a deployed client cannot encrypt reordered columns by mistake.
    """

    input_quantizer: UniformQuantizer
    encoding: InputEncoding
    output_quantizer: UniformQuantizer
    output_bias: np.ndarray | None = None
    output_combine: np.ndarray | None = None
    output: OutputSpec | None = None
    warn_on_clip: bool = True
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.feature_names is None:
            return
        names = tuple(self.feature_names)
        if len(names) != self.n_features or not all(isinstance(name, str) for name in names):
            raise ValueError(
                f"feature_names must be {self.n_features} strings, one per feature, got {len(names)} "
                "names; pass the feature_names_in_ of the fitted model, or None"
            )
        object.__setattr__(self, "feature_names", names)  # frozen: a list passed in is kept as a tuple

    @property
    def n_features(self) -> int:
        return self.encoding.n_features

    def check_rows(self, X: Any, who: str = "ModelClient") -> np.ndarray:
        """Float rows to encode from ``X``: its column names checked as scikit-learn does, then its
        shape and values (:func:`veilml.runtime.data_checks.check_X`).

        A frame with other, missing or reordered columns than the model was fitted on raises
        scikit-learn's ``ValueError``; an array (no names) passes with scikit-learn's warning.
        """
        check_feature_names(X, self.feature_names, who)
        return check_X(X, self.n_features, who)

    def encode(self, X: np.ndarray) -> np.ndarray:
        """The integers to encrypt for float rows ``X``: quantized, then encoded."""
        return self.encoding.encode(self.input_quantizer.quantize(X, warn=self.warn_on_clip))

    def decode(self, integers: np.ndarray) -> np.ndarray:
        """Raw float scores of decrypted integers."""
        integers = np.asarray(integers, dtype=np.int64)
        if self.output_combine is not None:
            integers = integers @ self.output_combine
        return self.scores(integers)

    def scores(self, summed: np.ndarray) -> np.ndarray:
        """Raw float scores of the quantized scores themselves (decrypted integers after ``output_combine``)."""
        values = self.output_quantizer.dequantize(summed)
        return values if self.output_bias is None else values + self.output_bias

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities (classifiers) or predicted values (regressors) of raw scores."""
        if self.output is None:
            return raw
        return finish_scores(raw, self.output.task, self.output.post_transform)

    def predict(self, integers: np.ndarray) -> np.ndarray:
        """Labels (classifiers) or values (regressors, 1-D for one output) of decrypted integers."""
        return self.labels(self.decode(integers))

    def labels(self, raw: np.ndarray) -> np.ndarray:
        """Labels (classifiers) or values (regressors, 1-D for one output) of raw scores."""
        finished = self.finish(raw)
        if self.output is None or self.output.task == "regression":
            return finished[:, 0] if finished.ndim == 2 and finished.shape[1] == 1 else finished
        return np.asarray(self.output.classes)[np.argmax(finished, axis=1)]

    # ----------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """The codec as JSON data; ``feature_names`` only when set (so a bundle without names reads as before)."""
        d: dict[str, Any] = {
            "input_quantizer": self.input_quantizer.to_dict(),
            "encoding": self.encoding.to_dict(),
            "output_quantizer": self.output_quantizer.to_dict(),
            "output_bias": _array(self.output_bias),
            "output_combine": _array(self.output_combine),
            "output": None if self.output is None else self.output.to_dict(),
            "warn_on_clip": self.warn_on_clip,
        }
        if self.feature_names is not None:
            d["feature_names"] = list(self.feature_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientCodec:
        try:
            combine = d.get("output_combine")
            bias = d.get("output_bias")
            encoding = InputEncoding.from_dict(d["encoding"])
            return cls(
                UniformQuantizer.from_dict(d["input_quantizer"]),
                encoding,
                UniformQuantizer.from_dict(d["output_quantizer"]),
                None if bias is None else np.asarray(bias, dtype=np.float64),
                None if combine is None else np.asarray(combine, dtype=np.int64),
                None if d.get("output") is None else OutputSpec.from_dict(d["output"]),
                bool(d.get("warn_on_clip", True)),
                _read_feature_names(d.get("feature_names"), encoding.n_features),  # absent: saved before names
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
