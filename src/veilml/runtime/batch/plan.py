"""The public facts of a batched model, what the client checks of them, and the cost model that picks an encoding.

A server describes its batched model (:class:`BatchDescription`): per encoding, the program's depth and its
numbers of inputs, outputs and products; and the clear matrix that turns the outputs into the scores the client's
codec decodes. Nothing else of the model. The client checks every fact against what it derives itself
(:meth:`BatchDescription.checked`): the number of inputs from its own quantizer and encoding, the BFV parameters
from the depth (:func:`~veilml.runtime.batch.seal_bfv.batch_params`, never taken from the server). A description
that disagrees is refused before any key is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from veilml.errors import VeilmlError
from veilml.runtime.batch.encoding import BatchEncoding, bits_per_feature

__all__ = [
    "BATCH_MIN_ROWS",
    "BATCH_MODULES",
    "DESCRIPTION_FORMAT",
    "FHE_PATHS",
    "LINK_BYTES_PER_S",
    "BatchDescription",
    "DescriptionError",
    "batch_available",
    "require_batch",
    "ProgramShape",
    "batch_seconds",
    "choose_encoding",
    "upload_bytes",
]

DESCRIPTION_FORMAT = "veilml-batch/1"
#: ``fhe="execute"`` takes the batched path from this many rows on (``fhe_path="auto"``: estimators, ``RemoteModel``):
#: above the largest crossover measured in ``benchmarks/results/trees_batch.md`` (6 to 28 rows, by model), the
#: number of rows from which one batch takes less time than scoring them one by one on the TFHE path
BATCH_MIN_ROWS = 128
#: the paths ``fhe="execute"`` can take (``fhe_path=``): chosen by the number of rows, or forced
FHE_PATHS = ("auto", "tfhe", "batch")
#: bounds on what a description may claim (far above real tree models): outputs, products, a combine entry
_MAX_OUTPUTS, _MAX_PRODUCTS, _MAX_COMBINE = 4096, 10**8, 2**20
#: per polynomial degree, measured costs on one core of this project's 2-core machine (seconds per ciphertext and
#: data prime): the client's encryption of one input (veilml's own seeded encryption, :mod:`.symmetric`, and
#: packing: 4.1-4.5 ms at 16384 and 5 primes, about 1.2 ms at 8192 and 3; SEAL's own took 16.6 and 6.8), the
#: server's relinearized product at the first level (59 ms at 16384 and 5 primes, 16 ms at 8192 and 3; deeper
#: products run on fewer primes, :func:`~veilml.runtime.batch.evaluation.level_schedule`); 32768 extrapolated.
#: The cost model of ``"auto"`` and the split.
_ENCRYPT_S = {8192: 0.0004, 16384: 0.0009, 32768: 0.002}
_PRODUCT_S = {8192: 0.0054, 16384: 0.012, 32768: 0.025}
#: the link the cost model assumes between client and server (bytes per second: 100 Mbit/s, a wide-area link;
#: with it the model keeps the smaller uploads of the split digits for large tables, as measured choices should
#: be on a real network: the full thermometer sends 3.6 times the bytes)
LINK_BYTES_PER_S = 12.5e6


#: what the batched path imports beyond veilml's core (the ``bfv`` extra: ``pip install 'veilml[bfv]'``)
BATCH_MODULES = ("tenseal", "numba", "zstandard")


def batch_available() -> bool:
    """Whether the batched path's dependencies (:data:`BATCH_MODULES`) are installed (nothing is imported)."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in BATCH_MODULES)


def require_batch() -> None:
    """ImportError naming the fix unless :func:`batch_available`."""
    if not batch_available():
        raise ImportError(
            f"the batched path needs {', '.join(BATCH_MODULES)}: pip install 'veilml[bfv]' (or use fhe_path='tfhe')"
        )


class DescriptionError(VeilmlError, ValueError):
    """A batched model's description that the client refuses (it was not derived the client's way)."""


class Shaped(Protocol):
    """What the cost model reads of a program: a :class:`ProgramShape`, a slot program, a tree program."""

    depth: int
    n_inputs: int
    n_products: int


@dataclass(frozen=True)
class ProgramShape:
    """One encoding's program as the client sees it: its depth and how many inputs, outputs and products."""

    encoding: BatchEncoding
    depth: int
    n_inputs: int
    n_outputs: int
    n_products: int

    @classmethod
    def of(cls, program: Any, encoding: BatchEncoding | str) -> ProgramShape:
        """The shape of a :class:`~veilml.runtime.batch.program.SlotProgram`."""
        return cls(BatchEncoding(encoding), program.depth, program.n_inputs, len(program.outputs), program.n_products)

    @property
    def params(self) -> Any:
        """The BFV parameters of this depth, derived here (:func:`~veilml.runtime.batch.seal_bfv.batch_params`)."""
        from veilml.runtime.batch.seal_bfv import batch_params

        return batch_params(self.depth)


def upload_bytes(tp: Shaped) -> int:
    """Bytes one batch uploads: every input as a seeded upload, residues packed (:mod:`.upload`)."""
    from veilml.runtime.batch.seal_bfv import batch_params
    from veilml.runtime.batch.upload import upload_size

    params = batch_params(tp.depth)
    return tp.n_inputs * upload_size(params.poly_degree, params.coeff_bits[:-1])


def batch_seconds(tp: Shaped, rows: int, link_bytes_per_s: float = LINK_BYTES_PER_S) -> float:
    """Estimated seconds to score ``rows`` rows: per batch, the client's encryptions and the server's products on
    one core each (:data:`_ENCRYPT_S`, :data:`_PRODUCT_S`), and the upload over a link of ``link_bytes_per_s``."""
    from veilml.runtime.batch.seal_bfv import batch_params

    params = batch_params(tp.depth)
    degree, primes = params.poly_degree, len(params.coeff_bits) - 1
    batches = max(1, -(-rows // degree))
    compute = primes * (tp.n_inputs * _ENCRYPT_S[degree] + tp.n_products * _PRODUCT_S[degree])
    return batches * (compute + upload_bytes(tp) / link_bytes_per_s)


def choose_encoding(programs: Mapping[BatchEncoding, Shaped], rows: int) -> BatchEncoding:
    """The encoding that scores ``rows`` rows in the least estimated time, upload included (:func:`batch_seconds`)."""
    return min(programs, key=lambda encoding: batch_seconds(programs[encoding], rows))


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DescriptionError(f"the batched model's {what} is {value!r}, not an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class BatchDescription:
    """The public facts of a batched model (see the module docstring); JSON with :meth:`to_dict`."""

    n_bits: int
    n_features: int
    shapes: Mapping[BatchEncoding, ProgramShape]
    combine: np.ndarray  # (n_outputs, n_scores): the scores are the decrypted outputs @ combine

    def to_dict(self) -> dict[str, Any]:
        programs = [
            {**{k: int(v) for k, v in vars(s).items() if k != "encoding"}, "encoding": str(s.encoding)}
            | {"params": s.params.to_dict()}
            for s in self.shapes.values()
        ]
        return {
            "format": DESCRIPTION_FORMAT,
            "n_bits": self.n_bits,
            "n_features": self.n_features,
            "combine": np.asarray(self.combine, dtype=np.int64).tolist(),
            "programs": programs,
        }

    @classmethod
    def checked(cls, data: Any, *, n_bits: int, n_features: int, n_scores: int | None = None) -> BatchDescription:
        """A description from a server, checked against what the client knows: its quantizer's ``n_bits`` and
        ``n_features``, the scores its codec decodes; each program's inputs are the client's own encoding's, its
        depth maps to parameters the client derives (any the server states must be those). Raises
        :class:`DescriptionError`."""
        if not isinstance(data, dict) or data.get("format") != DESCRIPTION_FORMAT:
            raise DescriptionError(f"not a batched model's description (format {DESCRIPTION_FORMAT!r} expected)")
        if data.get("n_bits") != n_bits or data.get("n_features") != n_features:
            raise DescriptionError(
                f"the description is of {data.get('n_features')!r} features at {data.get('n_bits')!r} bits, and the "
                f"client's quantizer of {n_features} features at {n_bits} bits"
            )
        try:
            combine = np.asarray(data.get("combine"))
        except (ValueError, TypeError):
            combine = np.zeros(0)
        if combine.ndim != 2 or combine.dtype.kind != "i" or not 0 < combine.shape[0] <= _MAX_OUTPUTS:
            raise DescriptionError("the description's combine is not a 2-D integer matrix of at most 4096 rows")
        if np.abs(combine).max(initial=0) > _MAX_COMBINE or (n_scores is not None and combine.shape[1] != n_scores):
            raise DescriptionError(f"the description's combine gives {combine.shape[1]} scores, the codec decodes {n_scores}")
        programs = data.get("programs")
        if not isinstance(programs, list) or not 0 < len(programs) <= len(BatchEncoding):
            raise DescriptionError("the description lists no program, or more than one per encoding")
        shapes = {}
        for entry in programs:
            shape = _checked_shape(entry, n_bits, n_features, combine.shape[0])
            if shape.encoding in shapes:
                raise DescriptionError(f"the description lists the {shape.encoding} encoding twice")
            shapes[shape.encoding] = shape
        return cls(n_bits, n_features, shapes, combine.astype(np.int64))


def _checked_shape(entry: Any, n_bits: int, n_features: int, n_outputs: int) -> ProgramShape:
    """One program's facts, checked (see :meth:`BatchDescription.checked`)."""
    from veilml.runtime.batch.seal_bfv import batch_params

    if not isinstance(entry, dict):
        raise DescriptionError("a program of the description is not an object")
    try:
        encoding = BatchEncoding(entry.get("encoding"))
    except ValueError:
        raise DescriptionError(f"unknown encoding {entry.get('encoding')!r} in the description") from None
    inputs = n_features * bits_per_feature(encoding, n_bits)
    if entry.get("n_inputs") != inputs:
        raise DescriptionError(
            f"the {encoding} program reads {entry.get('n_inputs')!r} inputs, and the client encrypts {inputs} "
            f"({n_features} features of {bits_per_feature(encoding, n_bits)} bits)"
        )
    depth = _integer(entry.get("depth"), "depth", 0, 10**6)
    try:
        params = batch_params(depth)
    except ValueError as error:
        raise DescriptionError(f"the description's depth maps to no parameters the client uses: {error}") from None
    if "params" in entry and entry["params"] != params.to_dict():
        raise DescriptionError(
            f"the description states the parameters {entry['params']!r}, and the client derives {params.to_dict()} from "
            f"depth {depth}: refused (a client chooses its own parameters)"
        )
    if entry.get("n_outputs") != n_outputs:
        raise DescriptionError(f"the {encoding} program has {entry.get('n_outputs')!r} outputs, its combine {n_outputs}")
    products = _integer(entry.get("n_products"), "number of products", 0, _MAX_PRODUCTS)
    return ProgramShape(encoding, depth, inputs, n_outputs, products)
