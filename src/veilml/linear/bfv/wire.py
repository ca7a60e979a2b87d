"""What travels between a ``bfv`` worker and its clients (both engines): setup, ciphertext and result messages.

- setup (worker -> client, JSON): the matrix shape, input bits, the largest |weight| and the largest row
  block for which the worker keeps the weights encoded (the client's planner needs both; neither reveals
  a weight).
- evaluation keys (client -> worker): only the public parameters (each engine's ``BFVParams``; with
  ``veilml-bfv-params/3`` the seed of the session's public uniform polynomials, :mod:`veilml.linear.bfv.prg`).
- ciphertext (client -> worker): ``pack_frames([header, data frames...])``: the JSON header names the row
  count and the block plan (and the engine's fields); the data frames are the engine's. ``veilml-bfv-ct/3``:
  the header's ``id`` (the request's, echoed by its result) and ``hint`` (whether the result is to carry the
  session's second polynomials); one frame, the first polynomials' residues, K = R J ciphertexts (row block by
  row block, inner block by inner block) each mod p1 then mod p2, N coefficients each, 27 bits per residue
  (:func:`~veilml.linear.bfv.encoding.pack_bits`'s layout). ``veilml-bfv-ct/1``: SEAL's seeded ciphertexts
  (first polynomials mod the 54-bit prime, then one PRNG info per ciphertext, :mod:`veilml.linear.bfv.seal`).
- result (worker -> client): ``pack_frames([header, values...])``, switched to q' and bit-packed.
  ``veilml-bfv-result/3``: the request's ``id`` and ``hint``; the n_t output coefficients of each of the
  R C result ciphertexts (row block by row block, column by column), then, when asked, the C whole second
  polynomials (:mod:`veilml.linear.bfv.product`). ``veilml-bfv-result/1``: per result ciphertext the whole
  second polynomial and the first polynomial's output coefficients.

Both messages are :func:`~veilml.linear.base.pack_frames` frames: veilml's one framing of byte strings
(:func:`veilml.runtime.envelope.pack_batch`). Every reader checks formats, counts and sizes before anything
reaches SEAL; malformed bytes raise ValueError. JSON is parsed only below a length bound
(:data:`MAX_HEADER_BYTES`), and a nesting too deep for the parser is a ValueError too, never a RecursionError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from veilml.linear.base import MALFORMED, json_message, pack_frames, unpack_frames
from veilml.linear.bfv.planner import POLY_DEGREE, Plan

__all__ = [
    "MAX_HEADER_BYTES",
    "BFVSetup",
    "pack_message",
    "read_fields",
    "read_message",
]

#: longest JSON header or setup message read (an honest one is under 150 bytes)
MAX_HEADER_BYTES = 1024


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class BFVSetup:
    """What the worker publishes for one matrix."""

    rows: int
    cols: int
    input_bits: int
    w_max: int
    cached_rows: int  # the worker keeps the weights encoded for plans of at most this many rows per block (0: never)

    def to_bytes(self, fmt: str) -> bytes:
        """The setup message of format ``fmt`` (each engine names its own)."""
        return json.dumps({"format": fmt, **self.__dict__}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, fmt: str) -> BFVSetup:
        try:
            d = json_message(data, fmt, MAX_HEADER_BYTES)
            setup = cls(
                _int(d["rows"], 1, 2**24, "rows"),
                _int(d["cols"], 1, 2**24, "cols"),
                _int(d["input_bits"], 1, 16, "input_bits"),
                _int(d["w_max"], 0, 2**24, "w_max"),
                _int(d["cached_rows"], 0, POLY_DEGREE, "cached_rows"),
            )
        except MALFORMED as error:
            raise ValueError(f"not a {fmt} setup from a bfv worker ({error})") from None
        return setup


def pack_message(fmt: str, n: int, plan: Plan | None, frames: list[bytes], **fields: object) -> bytes:
    """A ciphertext or result message: its header (the format, row count, plan and the engine's ``fields``) and frames."""
    shape = None if plan is None else [plan.n_t, plan.n_d, plan.n_m, plan.shift]
    return pack_frames([json.dumps({"format": fmt, "n": n, "plan": shape, **fields}).encode(), *frames])


def read_message(data: bytes, fmt: str, max_rows: int = 2**24) -> tuple[int, Plan | None, list[bytes]]:
    """(row count, plan, data frames) of a ciphertext or result message; the plan is None for zero rows."""
    n, plan, frames, _ = read_fields(data, fmt, max_rows)
    return n, plan, frames


def read_fields(data: bytes, fmt: str, max_rows: int = 2**24) -> tuple[int, Plan | None, list[bytes], dict[str, object]]:
    """:func:`read_message` and the whole header, for the engine's own fields (which the engine checks)."""
    frames = unpack_frames(data)
    try:
        header = json_message(frames[0] if frames else b"{}", fmt, MAX_HEADER_BYTES, "header")
        n = _int(header["n"], 0, max_rows, "the row count")
        if n == 0:
            if header["plan"] is not None or len(frames) != 1:
                raise ValueError("an empty message has no plan and no data")
            return 0, None, [], header
        n_t, n_d, n_m, shift = (_int(v, 1, POLY_DEGREE, "a plan entry") for v in header["plan"])
    except MALFORMED as error:
        raise ValueError(f"expected a {fmt} message ({error})") from None
    if n_t * n_d * n_m != POLY_DEGREE or any(v & (v - 1) for v in (n_t, n_d, n_m)):
        raise ValueError(f"a block shape is three powers of two whose product is {POLY_DEGREE}, got {(n_t, n_d, n_m)}")
    return n, Plan(n_t, n_d, n_m, shift), frames[1:], header
