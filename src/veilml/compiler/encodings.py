"""What the client encrypts: an encoding of the quantized input, applied before encryption.

The encoding is part of a compiled model (a model compiled for thermometer inputs cannot take raw
ones). Both encodings here depend only on the input's shape and precision, never on the model's
parameters: the encoding itself tells the client nothing about the model (the quantizer applied
before it is a separate, per-model object).

- ``identity``: the quantized value itself, one ciphertext per feature.
- ``thermometer``: bit ``k`` of feature ``f`` is ``[q_f >= qmin + k]`` for ``k = 1 .. 2**n_bits - 1``.
  Every comparison ``q_f >= t`` is then one of the encrypted bits: comparisons cost nothing in FHE.
- ``chunked``: ``q_f - qmin`` is cut into a high and a low chunk (``low_bits`` bits), and each chunk
  is thermometer-coded: ``2**high_bits - 1 + 2**low_bits - 1`` bits per feature (14 instead of 63
  at 6 bits). A comparison on a chunk boundary is one of the bits; any other one is a single
  2-bit lookup on the sum of three of them (see :meth:`InputEncoding.chunk_columns`).
- ``thresholds`` (model-dependent, opt-in): only the bits ``[q_f >= k]`` a model reads, one per
  (feature, code) pair it lists. The fewest ciphertexts by far, but the list is the model's split
  points on the code grid: whoever holds the client side learns them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = ["MAX_ENCODED_SIZE", "MAX_ENCODING_BITS", "EncodingKind", "InputEncoding"]


class EncodingKind(StrEnum):
    """The kinds of input encoding. A string enum: ``kind == "chunked"`` still holds, and documents
    (``to_dict``) keep the plain names."""

    IDENTITY = "identity"
    THERMOMETER = "thermometer"
    CHUNKED = "chunked"
    THRESHOLDS = "thresholds"

    @classmethod
    def parse(cls, value: str) -> EncodingKind:
        """The kind named ``value`` (a string at the API), or a ValueError that lists the kinds."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown input encoding {value!r}; use one of {', '.join(map(repr, KINDS))}") from None


#: the kinds' names, in the order error messages list them
KINDS = tuple(kind.value for kind in EncodingKind)

#: the most integers an encoded row may hold when read back (``from_dict``: a client bundle may come
#: from a hostile server). Each is one ciphertext: breast cancer's 30 features in 6-bit thermometer
#: code take 1,890, 200 features at 8 bits 51,000; a 1.2 KB codec asking for 30 x 2**24 made
#: ``encode`` allocate 3.75 GiB. At this bound a batch of 256 rows encodes into 256 MiB.
MAX_ENCODED_SIZE = 2**17
#: the widest code grid read back (qmax - qmin < 2**MAX_ENCODING_BITS); veilml quantizes inputs to at most 16 bits
MAX_ENCODING_BITS = 24


@dataclass(frozen=True)
class InputEncoding:
    """What the client encrypts for ``n_features`` quantized inputs on the code grid ``[qmin, qmax]``."""

    kind: EncodingKind  # a kind's name is accepted too, and converted
    n_features: int
    qmin: int
    qmax: int
    low_bits: int = 0  # chunked only: bits of the low chunk
    thresholds: tuple[tuple[int, int], ...] = ()  # thresholds only: the (feature, code) pairs encrypted

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EncodingKind.parse(self.kind))
        if self.qmax <= self.qmin:
            raise ValueError("an input encoding needs qmax > qmin")
        if self.kind is EncodingKind.CHUNKED:
            if self.levels & (self.levels - 1):
                raise ValueError("a chunked encoding needs a power-of-two number of levels")
            if not 1 <= self.low_bits < self.total_bits:
                raise ValueError(f"low_bits must be in [1, {self.total_bits - 1}], got {self.low_bits}")
        elif self.low_bits:
            raise ValueError("low_bits is for chunked encodings only")
        if self.kind is EncodingKind.THRESHOLDS:
            pairs = tuple((int(f), int(k)) for f, k in self.thresholds)
            object.__setattr__(self, "thresholds", pairs)
            bad = [(f, k) for f, k in pairs if not (0 <= f < self.n_features and self.qmin < k <= self.qmax)]
            if not pairs or bad:
                raise ValueError(
                    f"a thresholds encoding needs (feature, code) pairs with 0 <= feature < {self.n_features} and "
                    f"{self.qmin} < code <= {self.qmax}; got {list(pairs)[:4] if not bad else bad[:4]}"
                )
        elif self.thresholds:
            raise ValueError("thresholds is for thresholds encodings only")

    @property
    def total_bits(self) -> int:
        return (self.levels - 1).bit_length()

    @property
    def _chunk_sizes(self) -> tuple[int, int]:
        """Thermometer bits of the high and the low chunk of one feature."""
        return 2 ** (self.total_bits - self.low_bits) - 1, 2**self.low_bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    @property
    def size(self) -> int:
        """Encrypted integers per sample."""
        if self.kind is EncodingKind.CHUNKED:
            return self.n_features * sum(self._chunk_sizes)
        if self.kind is EncodingKind.THRESHOLDS:
            return len(self.thresholds)
        return self.n_features if self.kind is EncodingKind.IDENTITY else self.n_features * (self.levels - 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Declared per-element range of the encoded vector."""
        if self.kind is EncodingKind.IDENTITY:
            return np.full(self.size, self.qmin), np.full(self.size, self.qmax)
        return np.zeros(self.size, np.int64), np.ones(self.size, np.int64)

    def column(self, feature: int, code: int) -> int:
        """Thermometer position of the bit ``[q_feature >= code]`` (``qmin < code <= qmax``)."""
        if self.kind is not EncodingKind.THERMOMETER:
            raise ValueError("column() is defined for thermometer encodings only")
        if not self.qmin < code <= self.qmax:
            raise ValueError(f"code {code} has no thermometer bit; it must be in ({self.qmin}, {self.qmax}]")
        return feature * (self.levels - 1) + (code - self.qmin - 1)

    def chunk_columns(self, feature: int, code: int) -> tuple[list[int], int]:
        """How a chunked encoding computes ``[q_feature >= code]``: (columns, constant).

        With ``code - qmin = h * 2**low_bits + l`` and ``H(k)`` the high chunk's thermometer bit
        ``[high >= k]`` (``H(0) = 1``, ``H(2**high_bits) = 0``), ``L(k)`` the low chunk's:

        - ``l == 0``: the comparison is ``H(h)``, one column and no constant;
        - otherwise ``s = H(h) + H(h + 1) + L(l)`` (the columns' sum plus the constant) is 2 or 3
          exactly when ``high > h``, or ``high == h`` and ``low >= l``: the comparison is
          ``[s >= 2]``, a lookup on 2 bits.
        """
        if self.kind is not EncodingKind.CHUNKED:
            raise ValueError("chunk_columns() is defined for chunked encodings only")
        if not self.qmin < code <= self.qmax:
            raise ValueError(f"code {code} has no chunked comparison; it must be in ({self.qmin}, {self.qmax}]")
        n_high, n_low = self._chunk_sizes
        base = feature * (n_high + n_low)
        h, low = divmod(code - self.qmin, 2**self.low_bits)
        if low == 0:
            return [base + h - 1], 0
        columns, constant = [base + n_high + low - 1], 0
        for k in (h, h + 1):
            if k == 0:
                constant += 1
            elif k <= n_high:
                columns.append(base + k - 1)
        return columns, constant

    def encode(self, q: np.ndarray) -> np.ndarray:
        """Encoded batch (n_samples, size) of quantized inputs q (n_samples, n_features)."""
        q = np.asarray(q, dtype=np.int64)
        if q.ndim != 2 or q.shape[1] != self.n_features:
            raise ValueError(f"expected quantized inputs of shape (n, {self.n_features}), got {q.shape}")
        if self.kind is EncodingKind.IDENTITY:
            return q
        if self.kind is EncodingKind.THRESHOLDS:
            features = np.array([f for f, _ in self.thresholds])
            codes = np.array([k for _, k in self.thresholds])
            return (q[:, features] >= codes).astype(np.int64)
        if self.kind is EncodingKind.CHUNKED:
            high, low = np.divmod(q - self.qmin, 2**self.low_bits)
            n_high, n_low = self._chunk_sizes
            bits = np.concatenate(
                [high[:, :, None] >= np.arange(1, n_high + 1), low[:, :, None] >= np.arange(1, n_low + 1)], axis=2
            )
            return bits.reshape(q.shape[0], -1).astype(np.int64)
        codes = np.arange(self.qmin + 1, self.qmax + 1)
        bits = q[:, :, None] >= codes[None, None, :]
        return bits.reshape(q.shape[0], -1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value  # the plain name: documents stay byte-identical
        if not self.low_bits:  # documents written before chunked encodings existed stay the same
            del d["low_bits"]
        if self.thresholds:
            d["thresholds"] = [list(pair) for pair in self.thresholds]
        else:
            del d["thresholds"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputEncoding:
        """The encoding of :meth:`to_dict`'s document, bounded: the document may come from a hostile
        server (a client bundle), so sizes are checked before anything is allocated for them."""
        d = dict(d)
        for name in ("n_features", "qmin", "qmax", "low_bits"):
            value = d.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"an input encoding's {name} must be an integer, got {value!r}")
        if not 1 <= d.get("n_features", 0) <= MAX_ENCODED_SIZE:
            raise ValueError(f"an input encoding needs 1 to {MAX_ENCODED_SIZE:,} features, got {d.get('n_features')!r}")
        qmin, qmax = d.get("qmin", 0), d.get("qmax", 0)
        if not 0 < qmax - qmin < 2**MAX_ENCODING_BITS or max(abs(qmin), abs(qmax)) >= 2**62:
            raise ValueError(
                f"an input encoding's code grid [{qmin}, {qmax}] is wider than {MAX_ENCODING_BITS} bits or "
                "out of range: refused (a bundle that asks for it may come from a hostile server)"
            )
        if "thresholds" in d:
            pairs = d["thresholds"]
            if not isinstance(pairs, (list, tuple)) or len(pairs) > MAX_ENCODED_SIZE:
                raise ValueError(f"an input encoding's thresholds must be a list of at most {MAX_ENCODED_SIZE:,} pairs")
            d["thresholds"] = tuple(tuple(pair) for pair in pairs)
        if not 0 <= d.get("low_bits", 0) < MAX_ENCODING_BITS:
            raise ValueError(f"an input encoding's low_bits must be in [0, {MAX_ENCODING_BITS}), got {d.get('low_bits')!r}")
        encoding = cls(**d)
        if encoding.size > MAX_ENCODED_SIZE:
            raise ValueError(
                f"this input encoding makes rows of {encoding.size:,} integers, more than the {MAX_ENCODED_SIZE:,} "
                "veilml reads back: refused (a bundle that asks for it may come from a hostile server, trying to "
                "exhaust this machine's memory)"
            )
        return encoding
