"""What travels between a ``glwe`` worker and its clients: crypto parameters, setup, ciphertext and result messages.

A setup is JSON (:class:`GLWESetup`); ciphertexts and results are :func:`~veilml.linear.base.pack_frames`
frames (veilml's one framing of byte strings, :func:`veilml.runtime.envelope.pack_batch`) whose first frame is a JSON header (``format``, ``n`` rows, ``blocks``, matrix ``rows``) and whose
other frames are the extension's serialized objects, one per row block. Malformed bytes raise ValueError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.linear.base import MALFORMED, MAX_JSON_MESSAGE_BYTES, json_message
from veilml.linear.glwe.extension import load_fhext

__all__ = [
    "CIPHERTEXT_FORMAT",
    "MALFORMED",
    "RESULT_FORMAT",
    "SETUP_FORMAT",
    "GLWESetup",
    "canonical_params",
    "pack_header",
    "params_digest",
    "read_header",
]

# what parsing a forged or truncated JSON document can raise

SETUP_FORMAT = "veilml-glwe-setup/1"
CIPHERTEXT_FORMAT = "veilml-glwe-ct/1"
RESULT_FORMAT = "veilml-glwe-result/1"


def canonical_params(crypto_params: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if crypto_params is None:
        crypto_params = load_fhext().default_params()
    if isinstance(crypto_params, (str, bytes)):
        try:
            params = json.loads(crypto_params)
        except json.JSONDecodeError as error:
            raise ValueError(f"GLWE crypto parameters are not valid JSON: {error}") from None
    else:
        params = dict(crypto_params)
    if not isinstance(params, dict):
        raise TypeError("GLWE crypto parameters must be a JSON object")
    for field in (
        "bits_reserved_for_computation",
        "polynomial_size",
        "packing_ks_polynomial_size",
    ):
        if not isinstance(params.get(field), int) or params[field] <= 0:
            raise ValueError(f"GLWE crypto parameters lack a positive integer {field!r}")
    return params


def params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GLWESetup:
    """What the server publishes for one matrix (``setup()``): parameters, blocks, the offset fix."""

    crypto_params: dict[str, Any]
    rows: int
    cols: int
    input_bits: int
    blocks: tuple[tuple[int, int], ...]
    col_sums: np.ndarray  # of the server's matrix, exact: the client adds ``offset * col_sums``

    @property
    def offset(self) -> int:
        return 2 ** (self.input_bits - 1)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": SETUP_FORMAT,
                "crypto_params": self.crypto_params,
                "rows": self.rows,
                "cols": self.cols,
                "input_bits": self.input_bits,
                "blocks": [list(b) for b in self.blocks],
                "col_sums": [int(v) for v in self.col_sums],
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, rows: int, cols: int) -> GLWESetup:
        """The setup of a (rows, cols) matrix; its size is bounded by them (a column sum and two block edges per row
        take at most 24 bytes each)."""
        try:
            d = json_message(data, SETUP_FORMAT, MAX_JSON_MESSAGE_BYTES + 24 * (cols + 2 * rows))
            rows, cols, input_bits = (
                int(d["rows"]),
                int(d["cols"]),
                int(d["input_bits"]),
            )
            blocks = tuple((int(a), int(b)) for a, b in d["blocks"])
            col_sums = np.asarray(d["col_sums"], dtype=np.int64).reshape(-1)
            params = canonical_params(d["crypto_params"])
        except MALFORMED as error:
            raise ValueError(f"not a GLWE setup from a 'glwe' worker ({error})") from None
        edges = [0] + [b for _, b in blocks]
        if not blocks or any(a != e for (a, _), e in zip(blocks, edges)) or edges[-1] != rows or col_sums.shape != (cols,):
            raise ValueError("inconsistent GLWE setup: row blocks must tile the matrix rows and col_sums match its columns")
        return cls(params, rows, cols, input_bits, blocks, col_sums)


def pack_header(fmt: str, n: int, blocks: int, rows: int) -> bytes:
    return json.dumps({"format": fmt, "n": n, "blocks": blocks, "rows": rows}).encode()


def read_header(frame: bytes, fmt: str) -> dict[str, int]:
    try:
        d = json_message(frame, fmt)
        return {k: int(d[k]) for k in ("n", "blocks", "rows")}
    except MALFORMED as error:
        raise ValueError(f"expected a {fmt} message ({error})") from None
