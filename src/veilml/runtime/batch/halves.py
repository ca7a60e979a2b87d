"""The batched path in two halves that exchange bytes: the server's (the model) and the client's (the data).

- :class:`BatchModelServer` holds the model as slot programs, one per encoding (what a server bundle's
  ``batch.json`` stores), publishes their :class:`~.plan.BatchDescription`, and answers a
  :class:`BatchRequest` after checking it: a known encoding, 1 to N rows, exactly the program's number of inputs,
  each ciphertext and key no larger than a fresh one at the parameters of that depth (SEAL then checks that each
  belongs to them). It sees public keys and ciphertexts only.
- :class:`BatchModelClient` holds the quantizer (a :class:`~veilml.runtime.codec.ClientCodec`) and a description
  it checked (:meth:`~.plan.BatchDescription.checked`); each :class:`BatchSession` derives the parameters from
  the depth itself, makes a fresh secret key, encrypts every input bit of each batch, and checks each answer
  (count and sizes, by :meth:`~.seal_bfv.BatchClient.decrypt`) before decrypting it.

A request is one batch: a JSON header (encoding, rows, number of inputs), the relinearization and public keys,
then one ciphertext per input, framed by :func:`~veilml.runtime.envelope.pack_batch`; the answer is one
ciphertext per output, framed the same way. The secret key never leaves the session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.runtime.batch.encoding import BatchEncoding, encode_codes
from veilml.runtime.batch.plan import BatchDescription, ProgramShape, choose_encoding
from veilml.runtime.batch.program import SlotProgram
from veilml.runtime.envelope import pack_batch, unpack_batch

__all__ = [
    "PROGRAMS_FORMAT",
    "REQUEST_FORMAT",
    "BatchModelClient",
    "BatchModelServer",
    "BatchRequest",
    "BatchSession",
    "answer_bytes",
    "pipelined",
    "request_bytes",
]

REQUEST_FORMAT = "veilml-batch-request/1"
PROGRAMS_FORMAT = "veilml-batch-programs/1"
_OVERHEAD = 65536  # SEAL's headers, the framing, the JSON header: far more than they take


def ciphertext_bytes(params: Any) -> int:
    """The bytes of an input at ``params``: a seeded, packed upload (:mod:`.upload`)."""
    from veilml.runtime.batch.upload import upload_size

    return upload_size(params.poly_degree, params.coeff_bits[:-1])


def keys_bytes(params: Any) -> int:
    """The most bytes of the relinearization and public keys at ``params`` together."""
    k = len(params.coeff_bits)
    return (k - 1) * 2 * params.poly_degree * k * 8 + 2 * params.poly_degree * k * 8 + 2 * _OVERHEAD


def request_bytes(shape: ProgramShape) -> int:
    """The most bytes of one batch's request for a program of ``shape``."""
    return keys_bytes(shape.params) + shape.n_inputs * ciphertext_bytes(shape.params) + _OVERHEAD


def answer_bytes(shape: ProgramShape) -> int:
    """The most bytes of one batch's answer: one ciphertext at the last prime per output, framed."""
    return shape.n_outputs * (2 * shape.params.poly_degree * 8 + 4096) + _OVERHEAD


@dataclass(frozen=True)
class BatchRequest:
    """One batch: its encoding and rows, the client's public keys, one ciphertext per input."""

    encoding: BatchEncoding
    rows: int
    relin_keys: bytes
    public_key: bytes
    inputs: list[bytes]

    def pack(self) -> bytes:
        header = {"format": REQUEST_FORMAT, "encoding": str(self.encoding), "rows": self.rows, "inputs": len(self.inputs)}
        return pack_batch([json.dumps(header).encode(), self.relin_keys, self.public_key, *self.inputs])

    @classmethod
    def unpack(cls, body: bytes, *, max_inputs: int, max_bytes: int) -> BatchRequest:
        """A request's parts (framing and header checked; the server checks the rest). Raises ValueError."""
        items = unpack_batch(body, max_items=max_inputs + 3, max_bytes=max_bytes, what="batched request", item="input")
        if len(items) < 3 or len(items[0]) > 4096:
            raise ValueError("a batched request is a header, two keys and the ciphertexts: some are missing")
        try:
            header = json.loads(items[0])
            encoding, rows, count = BatchEncoding(header["encoding"]), header["rows"], header["inputs"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("the batched request's header is not an object naming an encoding, rows and inputs") from None
        if header.get("format") != REQUEST_FORMAT or type(rows) is not int or count != len(items) - 3:
            raise ValueError(f"the batched request's header (format {REQUEST_FORMAT}) does not describe its parts")
        return cls(encoding, rows, items[1], items[2], items[3:])


class BatchModelServer:
    """The server's half: the model's slot programs by encoding, checked requests in, released outputs out."""

    def __init__(self, programs: Mapping[BatchEncoding, SlotProgram], n_bits: int, n_features: int, combine: Any) -> None:
        self.programs = {BatchEncoding(e): p for e, p in programs.items()}
        shapes = {e: ProgramShape.of(p, e) for e, p in self.programs.items()}
        self.description = BatchDescription(n_bits, n_features, shapes, np.asarray(combine, dtype=np.int64))
        for shape in shapes.values():  # a program too deep for any parameters is refused here, not per request
            _ = shape.params

    def to_json(self) -> str:
        """The programs and their description (a server bundle's ``batch.json``)."""
        programs = {str(e): p.to_dict() for e, p in self.programs.items()}
        return json.dumps({"format": PROGRAMS_FORMAT, "description": self.description.to_dict(), "programs": programs})

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchModelServer:
        """The server's half of :meth:`to_json`'s text, every program checked (:meth:`SlotProgram.from_dict`)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != PROGRAMS_FORMAT:
            raise ValueError(f"not the batched programs of a bundle (format {PROGRAMS_FORMAT!r})")
        d = data["description"]
        programs = {BatchEncoding(e): SlotProgram.from_dict(p) for e, p in data["programs"].items()}
        server = cls(programs, d["n_bits"], d["n_features"], d["combine"])
        BatchDescription.checked(server.description.to_dict(), n_bits=d["n_bits"], n_features=d["n_features"])
        return server

    def check(self, request: BatchRequest) -> SlotProgram:
        """The program ``request`` is for, once its sizes are those of that program; raises ValueError."""
        program = self.programs.get(request.encoding)
        if program is None:
            raise ValueError(f"this model has no {request.encoding} program; it has {sorted(map(str, self.programs))}")
        params = self.description.shapes[request.encoding].params
        if not 0 < request.rows <= params.slots:
            raise ValueError(f"a batch holds 1 to {params.slots} rows at these parameters, the request says {request.rows}")
        if len(request.inputs) != program.n_inputs:
            raise ValueError(
                f"the {request.encoding} program reads {program.n_inputs} ciphertexts, the request has {len(request.inputs)}"
            )
        if max(map(len, request.inputs), default=0) > ciphertext_bytes(params):
            raise ValueError(f"an input is larger than a fresh ciphertext at these parameters ({ciphertext_bytes(params)} bytes)")
        if len(request.relin_keys) + len(request.public_key) > keys_bytes(params):
            raise ValueError("the request's keys are larger than keys at these parameters")
        return program

    def answer(self, request: BatchRequest) -> list[bytes]:
        """The released outputs of one checked request (masked, flooded, at the last prime)."""
        from veilml.runtime.batch.seal_bfv import serve_batch

        program = self.check(request)
        keys = (self.description.shapes[request.encoding].params, request.relin_keys, request.public_key)
        try:
            return serve_batch(keys, program, list(request.inputs), request.rows)
        except RuntimeError as error:  # SEAL refuses keys or ciphertexts of other parameters
            raise ValueError(f"the request's keys or ciphertexts are not of these parameters ({error})") from None

    def answer_bytes(self, body: bytes, max_bytes: int) -> bytes:
        """:meth:`answer` on a packed request, packed (what ``veilml serve`` and a Dask worker run)."""
        most = max(p.n_inputs for p in self.programs.values())
        return pack_batch(self.answer(BatchRequest.unpack(body, max_inputs=most, max_bytes=max_bytes)))


def _n_scores(codec: Any) -> int | None:
    """The scores the codec decodes, where it says (its combine of a TFHE circuit's outputs)."""
    combine = getattr(codec, "output_combine", None)
    return None if combine is None else int(np.asarray(combine).shape[1])


class BatchModelClient:
    """The client's half: its quantizer (a :class:`~veilml.runtime.codec.ClientCodec`) and a checked description.

    ``description``: a :class:`~.plan.BatchDescription` or its JSON data, from the server; checked against the
    codec here (:meth:`~.plan.BatchDescription.checked`, :class:`~.plan.DescriptionError`) before anything else.
    """

    def __init__(self, codec: Any, description: BatchDescription | Mapping[str, Any]) -> None:
        data = description.to_dict() if isinstance(description, BatchDescription) else description
        self.codec, self.last_session = codec, None  # the session of the last score() call (bytes up and down)
        quantizer = codec.input_quantizer
        self.description = BatchDescription.checked(
            data, n_bits=int(quantizer.n_bits), n_features=codec.n_features, n_scores=_n_scores(codec)
        )

    def plan(self, rows: int, encoding: str = "auto", max_request_bytes: int | None = None) -> ProgramShape:
        """The program for ``rows`` rows: ``encoding``'s, or the fastest by the cost model among those whose request
        fits ``max_request_bytes`` (a server's largest body)."""
        shapes = dict(self.description.shapes)
        if encoding != "auto":
            if BatchEncoding(encoding) not in shapes:
                raise ValueError(f"this model has no {encoding} program; it has {sorted(map(str, shapes))}")
            shapes = {BatchEncoding(encoding): shapes[BatchEncoding(encoding)]}
        if max_request_bytes is not None:
            fitting = {e: s for e, s in shapes.items() if request_bytes(s) <= max_request_bytes}
            if not fitting:
                least = min(map(request_bytes, shapes.values()))
                raise ValueError(
                    f"one batch of this model takes up to {least / 2**20:.0f} MiB, over the server's limit of "
                    f"{max_request_bytes / 2**20:.0f} MiB per request: ask its operator for a larger --max-payload-mb"
                )
            shapes = fitting
        return shapes[choose_encoding(shapes, rows)]

    def session(self, shape: ProgramShape) -> BatchSession:
        """A session with a fresh secret key at the parameters ``shape``'s depth gives."""
        return BatchSession(self, shape)

    def score(
        self,
        X: np.ndarray,
        transport: Any,
        *,
        encoding: str = "auto",
        max_request_bytes: int | None = None,
        progress: bool | None = None,
        workers: int | None = None,
    ) -> np.ndarray:
        """The summed quantized scores (n_rows, n_scores) of checked float rows ``X``.

        ``transport`` takes an iterator of :class:`BatchRequest` (one per batch of up to N rows, encrypted as it
        asks for them, under one fresh key) and yields each batch's outputs in order: packed bytes (checked and
        unpacked here) or a list of ciphertexts. ``progress``: a bar over batches (None: on a terminal or in a
        notebook, :func:`veilml.runtime.progress.show_progress`).
        ``workers``: threads of this process that encrypt (None: as many as it has cores, up to 2).
        """
        from veilml.runtime.progress import progress_bar

        codes = self.codec.input_quantizer.quantize(np.asarray(X, dtype=np.float64), warn=self.codec.warn_on_clip)
        shape = self.plan(len(codes), encoding, max_request_bytes)
        self.last_session = None
        if not len(codes):
            return np.zeros((0, self.description.combine.shape[1]), np.int64)
        session = self.last_session = self.session(shape)
        slots = session.client.ctx.params.slots
        batches = [codes[start : start + slots] for start in range(0, len(codes), slots)]
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        session.workers = workers
        answers = iter(transport(session.request(batch) for batch in batches))
        found = [
            session.scores(next(answers, None), len(batch))
            for batch in progress_bar(
                batches, progress=progress, desc=f"batched FHE ({shape.encoding})", unit=f"batch of {slots}"
            )
        ]
        if next(answers, None) is not None:
            raise ValueError("the server answered more batches than were sent")
        return np.concatenate(found)


class BatchSession:
    """One fresh secret key (at the parameters of ``shape``'s depth, derived here) and the batches sent under it."""

    def __init__(self, owner: BatchModelClient, shape: ProgramShape) -> None:
        from veilml.runtime.batch.seal_bfv import BatchClient

        self.owner, self.shape = owner, shape
        self.client = BatchClient(shape.params)
        self.workers = 1  # the client's encryption threads (:meth:`BatchModelClient.score` sets them)
        self.bytes_up = self.bytes_down = 0

    def request(self, codes: np.ndarray) -> BatchRequest:
        """One batch of quantized rows (at most N), every input bit encrypted."""
        bits = encode_codes(codes, self.shape.encoding, self.owner.description.n_bits)
        inputs = self.client.encrypt(bits, self.workers)
        self.bytes_up += sum(map(len, inputs))
        return BatchRequest(self.shape.encoding, len(codes), self.client.relin_keys, self.client.public_key, inputs)

    def scores(self, answer: bytes | list[bytes] | None, rows: int) -> np.ndarray:
        """The summed quantized scores (rows, n_scores) of one batch's answer, checked before decryption."""
        if answer is None:
            raise ValueError("the server answered fewer batches than were sent")
        if isinstance(answer, (bytes, bytearray, memoryview)):
            most = answer_bytes(self.shape)
            answer = unpack_batch(bytes(answer), max_items=self.shape.n_outputs, max_bytes=most, what="batched result")
        self.bytes_down += sum(map(len, answer))
        outputs = self.client.decrypt(list(answer), rows, self.shape.n_outputs)
        return outputs.T @ self.owner.description.combine


def pipelined(send: Any, in_flight: int = 1) -> Any:
    """A transport for :meth:`BatchModelClient.score` that sends each request with ``send(request) -> answer`` in
    ``in_flight`` threads, so that the next batch is encrypted while the last ones are computed elsewhere."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def transport(requests: Iterable[BatchRequest]) -> Iterator[Any]:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="veilml-batch") as pool:
            pending: deque = deque()
            for request in requests:
                pending.append(pool.submit(send, request))
                while len(pending) > in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return transport
