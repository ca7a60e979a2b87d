"""Slot programs on encrypted tables: BFV with batching (SEAL 4, through ``tenseal``'s ``sealapi``).

Why SEAL: it is maintained, already a dependency of the LoRA engines (pinned through ``tenseal``), and has
what a leveled tree evaluation needs and nothing to write by hand: batching (one row per slot), relinearized
ciphertext products, modulus switching, and the HE standard's 128-bit table (``CoeffModulus.MaxBitCount``).

Parameters (:func:`batch_params`): the plaintext modulus ``t = 65537`` (the smallest batching prime for
N = 8192 and 16384; scores stay far below it), and the smallest of :data:`LEVELS` (a polynomial degree and
its primes) that the program's depth needs, within the HE standard's 128-bit table; :class:`BatchContext`
asks SEAL to check it (``sec_level_type.tc128``) and refuses otherwise. Everything
the client uses is derived from the program's depth by the client itself.

The client (:class:`BatchClient`) makes a fresh secret key per session and sends only public material: the
relinearization key and a public key (for the server's re-randomization). It encrypts each input bit
vector of a batch of up to N rows (:meth:`BatchClient.encrypt`: symmetric, seeded and bit-packed, see
:mod:`.upload`) and decrypts the outputs.

The server (:class:`BatchServer`) evaluates the program, then, before anything leaves it: multiplies every
output by a mask that zeroes the slots carrying no row (they hold nothing of the model), switches to the
last two primes, adds a fresh public-key encryption of zero (the second polynomial becomes fresh) and
*floods* the first polynomial with uniform noise in [-B, B], B = q / (16 t), and switches to the last prime. The
flooding hides the evaluation's noise, which depends on the model, when it is at most ``B / 2**40``: the
parameters keep at least :data:`FLOOD_MARGIN_BITS` bits of noise budget for it (checked by the tests with
the secret key).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilml.runtime.batch.evaluation import Evaluation, fresh, level_schedule
from veilml.runtime.batch.program import SlotProgram
from veilml.runtime.batch.symmetric import SecretKey, encrypt_rows
from veilml.runtime.batch.upload import pack_upload, seal_inputs
from veilml.runtime.seal_bytes import add_to_first_polynomial, seal_files

__all__ = [
    "FLOOD_MARGIN_BITS",
    "LEVELS",
    "PLAIN_MODULUS",
    "BatchClient",
    "BatchContext",
    "BatchParams",
    "BatchServer",
    "batch_params",
]

PLAIN_MODULUS = 65537
#: bits of noise budget an output keeps for the flooding to hide its noise (statistical distance 2**-40 per
#: coefficient), plus a few bits for decryption after the switch to the last prime
FLOOD_MARGIN_BITS = 48
#: per polynomial degree, the deepest program it evaluates and the bits of its coefficient primes (the last is
#: SEAL's special prime, used only by relinearization). A fresh ciphertext's noise budget is about the data
#: primes' bits minus 21 and a tree program consumes about 40 bits per level of products (measured with SEAL's
#: ``invariant_noise_budget`` on the benchmarks' models: 200-201 bits for 20 x 4 forests and boosters at depth
#: 4, 230-244 for depth-5 trees in digits); the rest is kept for the flooding (FLOOD_MARGIN_BITS). At 16,384 the
#: primes have 53 bits, not 60: the data primes' total is what the upload pays per input bit and row
#: (:mod:`.upload` packs each residue at its prime's 53 bits). 5 x 53 bits left 64-96 bits before flooding on
#: the benchmarks' seven models (``benchmarks/results/trees_batch.md``, all at depth 4); at depth 5, 6 x 53 bits
#: leave about 74-88 by the consumption above (not measured at these primes: no benchmark model needs depth 5
#: since trees are split, :func:`~veilml.models.trees.batch_lowering.best_tree_program`). Every total is within
#: SEAL's 128-bit table (218 bits at 8192, 438 at 16384, 881 at 32768), which SEAL checks.
LEVELS = {
    2: (8192, (60, 60, 60, 38)),
    4: (16384, (53,) * 6),
    5: (16384, (53,) * 7),
    9: (32768, (60,) * 12),
}


@dataclass(frozen=True)
class BatchParams:
    """The BFV parameters of a batched evaluation: polynomial degree, bits of the coefficient primes (the last
    one special), plaintext modulus."""

    poly_degree: int
    coeff_bits: tuple[int, ...]
    plain_modulus: int = PLAIN_MODULUS

    @property
    def slots(self) -> int:
        return self.poly_degree

    def to_dict(self) -> dict[str, Any]:
        return {"poly_degree": self.poly_degree, "coeff_bits": list(self.coeff_bits), "plain_modulus": self.plain_modulus}


def batch_params(depth: int) -> BatchParams:
    """The parameters (:data:`LEVELS`) of the smallest degree and modulus that evaluate ``depth`` products."""
    for deepest, (degree, bits) in LEVELS.items():
        if depth <= deepest:
            return BatchParams(degree, bits)
    raise ValueError(f"a depth-{depth} program is too deep for the batched path (at most {max(LEVELS)} products deep)")


class BatchContext:
    """SEAL's context, encoder and evaluator for :class:`BatchParams` (128-bit security checked by SEAL)."""

    def __init__(self, params: BatchParams) -> None:
        from tenseal import sealapi as seal

        if (params.poly_degree, params.coeff_bits) not in LEVELS.values() or params.plain_modulus != PLAIN_MODULUS:
            raise ValueError(f"unsupported batched parameters {params}: the client and server take them from batch_params()")
        self.seal, self.params = seal, params
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(params.poly_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_degree, list(params.coeff_bits)))
        parms.set_plain_modulus(seal.Modulus(params.plain_modulus))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ValueError(f"SEAL refuses the batched parameters {params}: {self.context.parameters_error_message()}")
        self.encoder = seal.BatchEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        # the levels: first (all data primes) ... last (one prime); flooding happens two primes from the end
        levels = [self.context.first_context_data()]
        while levels[-1].next_context_data() is not None:
            levels.append(levels[-1].next_context_data())
        self.moduli = [[m.value() for m in level.parms().coeff_modulus()] for level in levels]
        self.parms_ids = [list(level.parms_id()) for level in levels]
        self.flood_level = max(len(levels) - 2, 0)

    def plain(self, values: np.ndarray) -> Any:
        """A plaintext of slot values (padded with zeros to the slot count)."""
        full = np.zeros(self.params.slots, dtype=np.uint64)
        full[: len(values)] = np.asarray(values, dtype=np.int64) % self.params.plain_modulus
        plain = self.seal.Plaintext()
        self.encoder.encode(full.tolist(), plain)
        return plain

    def scalar(self, value: int) -> Any:
        """A constant plaintext (every slot ``value``)."""
        return self.seal.Plaintext(format(int(value) % self.params.plain_modulus, "X"))

    def save(self, obj: Any) -> bytes:
        return seal_files().save(obj)

    def load(self, target: Any, data: bytes) -> Any:
        return seal_files().load(target, self.context, data)


class BatchClient:
    """A fresh secret key; encrypts input bits, decrypts outputs; sends only public keys."""

    def __init__(self, params: BatchParams) -> None:
        self.ctx = BatchContext(params)
        seal = self.ctx.seal
        keygen = seal.KeyGenerator(self.ctx.context)
        self._secret = keygen.secret_key()
        public, relin = seal.PublicKey(), seal.RelinKeys()
        keygen.create_public_key(public)
        keygen.create_relin_keys(relin)
        self.public_key, self.relin_keys = self.ctx.save(public), self.ctx.save(relin)
        self._decryptor = seal.Decryptor(self.ctx.context, self._secret)
        primes = tuple(int(m) for m in self.ctx.moduli[0])
        self._key = SecretKey.from_seal(self.ctx.save(self._secret), params.poly_degree, primes, params.plain_modulus)

    def encrypt(self, bits: np.ndarray, workers: int = 1) -> list[bytes]:
        """Each input's bits (n_inputs, rows <= slots) as one upload (:mod:`.upload`: seeded, packed): every input,
        whether or not the model reads it (the upload says nothing of the model's comparisons).

        ``workers``: threads that encrypt chunks of the inputs at once (the kernels release the GIL).
        """
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] > self.ctx.params.slots:
            raise ValueError(f"expected input bits (inputs, rows <= {self.ctx.params.slots}), got shape {bits.shape}")
        if workers <= 1 or len(bits) <= _CHUNK:
            return _encrypt_rows(self._key, bits)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            chunks = [pool.submit(_encrypt_rows, self._key, bits[i : i + _CHUNK]) for i in range(0, len(bits), _CHUNK)]
            return [upload for chunk in chunks for upload in chunk.result()]

    def decrypt(self, outputs: list[bytes], rows: int, expected: int | None = None) -> np.ndarray:
        """The outputs (n_outputs, rows) as integers in [-t/2, t/2).

        What the server handed back is checked before any decryption: ``expected`` outputs (when given), each at
        most the size of a two-polynomial ciphertext at the last prime, and loaded there by SEAL.
        """
        t, n = self.ctx.params.plain_modulus, self.ctx.params.poly_degree
        if expected is not None and len(outputs) != expected:
            raise ValueError(f"the server answered {len(outputs)} outputs where the model has {expected}")
        if not 0 <= rows <= self.ctx.params.slots:
            raise ValueError(f"a batch holds at most {self.ctx.params.slots} rows, got {rows}")
        values = []
        for data in outputs:
            if len(data) > 2 * n * 8 + 4096:  # two polynomials at one prime, headers
                raise ValueError(f"a result of {len(data)} bytes is larger than any result at these parameters")
            try:
                ct = self.ctx.load(self.ctx.seal.Ciphertext(), data)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"a result is not a ciphertext at these parameters ({error})") from None
            if ct.size() != 2 or list(ct.parms_id()) != self.ctx.parms_ids[-1]:
                raise ValueError("a result is not a two-polynomial ciphertext at the last prime, as the server must send")
            plain = self.ctx.seal.Plaintext()
            self._decryptor.decrypt(ct, plain)
            slots = np.asarray(self.ctx.encoder.decode_uint64(plain), dtype=np.int64)[:rows]
            values.append(np.where(slots >= t // 2, slots - t, slots))
        return np.stack(values) if values else np.zeros((0, rows), np.int64)

    def noise_budget(self, data: bytes) -> int:
        """Bits of noise budget left in a ciphertext (tests: the flooding margin)."""
        return self._decryptor.invariant_noise_budget(self.ctx.load(self.ctx.seal.Ciphertext(), data))


class BatchServer:
    """Evaluates a slot program on a client's ciphertexts; holds the client's public keys, never a secret one."""

    def __init__(self, params: BatchParams, relin_keys: bytes, public_key: bytes) -> None:
        self.keys = (params, relin_keys, public_key)  # public: what a helper process needs (:func:`partial_sums`)
        self.ctx = BatchContext(params)
        seal = self.ctx.seal
        self._relin = self.ctx.load(seal.RelinKeys(), relin_keys)
        self._encryptor = seal.Encryptor(self.ctx.context, self.ctx.load(seal.PublicKey(), public_key))

    def evaluate(self, program: SlotProgram, inputs: list[bytes | None], rows: int, keep: Any = None) -> list[bytes]:
        """The program's outputs on one batch of ``rows`` rows, masked, flooded and switched to the last prime.

        ``keep`` (tests only) receives each output before the mask and flooding.
        """
        self._check_rows(rows)
        return self.release(self.sums(program, inputs), rows, keep)

    def evaluate_parts(
        self, programs: list[SlotProgram], inputs: list[bytes | None], rows: int, pool: Any = None, keep: Any = None
    ) -> list[bytes]:
        """Programs whose outputs add up (an ensemble's tree groups) evaluated at once, the first here and the others
        in ``pool`` (a ``concurrent.futures`` executor of processes), then summed and released as by :meth:`evaluate`."""
        self._check_rows(rows)
        others = (
            []
            if pool is None
            else [pool.submit(partial_sums, self.keys, program, _read_by(program, inputs)) for program in programs[1:]]
        )
        here = [self.sums(program, inputs) for program in (programs if pool is None else programs[:1])]
        outputs = here[0]
        for part in here[1:] + [[self.ctx.load(self.ctx.seal.Ciphertext(), data) for data in f.result()] for f in others]:
            if len(part) != len(outputs):
                raise ValueError("the parts of an ensemble have different numbers of outputs")
            outputs = [self._add(total, ct) for total, ct in zip(outputs, part)]
        return self.release(outputs, rows, keep)

    def sums(self, program: SlotProgram, inputs: list[bytes | None]) -> list[Any]:
        """The program's outputs as SEAL ciphertexts, before the mask and flooding (never to leave the server).

        Values are switched to fewer primes as the program goes deeper (:func:`level_schedule`): later products
        cost less, and the noise budget the flooding needs is kept (tested on the benchmarks' models).
        """
        if len(inputs) != program.n_inputs:
            raise ValueError(f"the program reads {program.n_inputs} inputs, got {len(inputs)}")
        read = [int(i) for i in np.flatnonzero(program.used_inputs())]
        missing = [i for i in read if inputs[i] is None]
        if missing:
            raise ValueError(f"input {missing[0]} is read by the program but was not sent")
        run = Evaluation(self.ctx, self._relin, self._constant, level_schedule(program.depth, self.ctx.flood_level))
        for ref, ct in zip(read, self._load_inputs([inputs[i] for i in read])):
            run.put(ref, ct, 0)
        for index, (a, b) in enumerate(program.products):
            run.multiply(program.n_inputs + index, program.depths[program.n_inputs + index], a, b)
        return [run.form(f, run.level_of(f)) for f in program.outputs]

    def release(self, outputs: list[Any], rows: int, keep: Any = None) -> list[bytes]:
        """What may leave the server: each output masked to the batch's rows, flooded, at the last prime."""
        mask = self.ctx.plain(np.ones(rows, dtype=np.int64))
        results = []
        for ct in outputs:
            if keep is not None:
                keep(self.ctx.save(ct))
            results.append(self._flood(fresh(self.ctx.seal, self.ctx.evaluator.multiply_plain, ct, mask)))
        return results

    def _add(self, a: Any, b: Any) -> Any:
        """a + b, the one at more primes switched to the other's level first."""
        ev, ids = self.ctx.evaluator, self.ctx.parms_ids
        level_a, level_b = ids.index(list(a.parms_id())), ids.index(list(b.parms_id()))
        if level_a != level_b:
            a, b = (
                (fresh(self.ctx.seal, ev.mod_switch_to, a, ids[level_b]), b)
                if level_a < level_b
                else (a, fresh(self.ctx.seal, ev.mod_switch_to, b, ids[level_a]))
            )
        return fresh(self.ctx.seal, ev.add, a, b)

    def _check_rows(self, rows: int) -> None:
        if not 0 < rows <= self.ctx.params.slots:
            raise ValueError(f"a batch holds 1 to {self.ctx.params.slots} rows, got {rows}")

    def _load_inputs(self, uploads: list[bytes]) -> list[Any]:
        ctx = self.ctx
        whole = seal_inputs(uploads, ctx.params.poly_degree, ctx.moduli[0], ctx.parms_ids[0])  # ValueError: not uploads
        loaded = []
        for data in whole:
            try:
                ct = ctx.load(ctx.seal.Ciphertext(), data)
            except (RuntimeError, ValueError) as error:  # SEAL refuses data of other parameters or sizes
                raise ValueError(f"an input ciphertext is not a fresh encryption at these parameters ({error})") from None
            loaded.append(ct)
        return loaded

    def _constant(self, value: int) -> Any:
        ct = self.ctx.seal.Ciphertext()
        self._encryptor.encrypt(self.ctx.scalar(value), ct)
        return ct

    def _flood(self, ct: Any) -> bytes:
        """Switch to the flooding level, re-randomize, flood the first polynomial, switch to the last prime."""
        ctx, ev = self.ctx, self.ctx.evaluator
        level = ctx.flood_level
        ev.mod_switch_to_inplace(ct, ctx.parms_ids[level])
        zero = ctx.seal.Ciphertext()
        self._encryptor.encrypt_zero(ctx.parms_ids[level], zero)
        ev.add_inplace(ct, zero)
        moduli = ctx.moduli[level]
        q = int(np.prod([int(m) for m in moduli], dtype=object))
        bound = q // (16 * ctx.params.plain_modulus)
        ct = ctx.load(
            ctx.seal.Ciphertext(), add_to_first_polynomial(ctx.save(ct), moduli, _uniform_noise(ctx.params.poly_degree, bound))
        )
        ev.mod_switch_to_inplace(ct, ctx.parms_ids[-1])
        return ctx.save(ct)


def _uniform_noise(n: int, bound: int) -> list[int]:
    """``n`` integers uniform in [-bound, bound] from the operating system's generator."""
    return [secrets.randbelow(2 * bound + 1) - bound for _ in range(n)]


_SERVERS: dict[tuple[BatchParams, bytes, bytes], BatchServer] = {}
_CHUNK = 32  # inputs per task of a client's encryption threads (two of symmetric.COLUMNS)


def _encrypt_rows(key: SecretKey, bits: np.ndarray) -> list[bytes]:
    """Uploads of each row of bits (:mod:`.upload`)."""
    return [pack_upload(seed, c0, key.primes) for seed, c0 in encrypt_rows(key, bits)]


def _read_by(program: SlotProgram, inputs: list[bytes | None]) -> list[bytes | None]:
    """The inputs a program reads (the others None): what a helper process is sent."""
    used = program.used_inputs()
    if len(inputs) != len(used):
        raise ValueError(f"the program reads {len(used)} inputs, got {len(inputs)}")
    return [data if read else None for data, read in zip(inputs, used)]


def _server(keys: tuple[BatchParams, bytes, bytes]) -> BatchServer:
    """This helper process's server for one client's public keys (made once, kept for the next batches)."""
    server = _SERVERS.get(keys)
    if server is None:
        _SERVERS.clear()  # one client's keys at a time
        server = _SERVERS[keys] = BatchServer(*keys)
    return server


def partial_sums(keys: tuple[BatchParams, bytes, bytes], program: SlotProgram, inputs: list[bytes | None]) -> list[bytes]:
    """A helper process's part of :meth:`BatchServer.evaluate_parts`: the program's raw outputs, saved (the server
    that called it adds them to its own and releases them; they never leave the server's processes)."""
    server = _server(keys)
    return [server.ctx.save(ct) for ct in server.sums(program, inputs)]


def serve_batch(
    keys: tuple[BatchParams, bytes, bytes], program: SlotProgram, inputs: list[bytes | None], rows: int
) -> list[bytes]:
    """A whole batch evaluated and released in a helper process (:meth:`BatchServer.evaluate`), so that the
    client encrypts the next batch meanwhile."""
    return _server(keys).evaluate(program, inputs, rows)
