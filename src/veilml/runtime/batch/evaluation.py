"""One evaluation of a slot program on SEAL ciphertexts, level by level (the server's half of the batched path).

Every value lives at a *level* (how many of the data primes were dropped): inputs at the first, products
switched down as the program goes deeper (:func:`level_schedule`), so that later products run on fewer primes;
linear forms are built once per level they are needed at. :class:`~.seal_bfv.BatchServer` owns the keys,
loads the inputs and releases the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veilml.runtime.batch.program import Linear

__all__ = ["Evaluation", "fresh", "level_schedule"]


def fresh(seal: Any, operation: Any, *args: Any) -> Any:
    """``operation(*args, destination)`` into a new ciphertext (sealapi's out-of-place operations)."""
    out = seal.Ciphertext()
    operation(*args, out)
    return out


def level_schedule(depth: int, flood_level: int) -> list[int]:
    """The level (primes dropped) of the values of each multiplicative depth 0 .. ``depth``: one level of slack,
    then one prime fewer per level of products, never below the flooding's level. A switch divides a value's
    noise with its modulus, so while the budget is above what the smaller modulus holds it costs nothing; the
    products after it run on fewer primes (on the benchmarks' 20 x 4 forests: 18 % less server time, the same
    budget left before flooding)."""
    slack = max(depth - flood_level, 1)
    return [min(max(d - slack, 0), flood_level) for d in range(depth + 1)]


class Evaluation:
    """One evaluation of a program on ciphertexts: each value at its level, linear forms built once per level."""

    def __init__(self, ctx: Any, relin_keys: Any, constant: Callable[[int], Any], levels: list[int]) -> None:
        self.ctx, self.relin_keys, self.constant, self.levels = ctx, relin_keys, constant, levels
        self.values: dict[int, Any] = {}
        self.level: dict[int, int] = {}
        self.forms: dict[tuple[Linear, int], Any] = {}
        self.switched: dict[tuple[int, int], Any] = {}

    def put(self, ref: int, ct: Any, level: int) -> None:
        self.values[ref], self.level[ref] = ct, level

    def level_of(self, f: Linear) -> int:
        return max((self.level[ref] for ref, _ in f.terms), default=0)

    def at(self, ref: int, level: int) -> Any:
        """Value ``ref`` at ``level`` (switched down once, kept)."""
        if self.level[ref] == level:
            return self.values[ref]
        if (ref, level) not in self.switched:
            self.switched[ref, level] = fresh(
                self.ctx.seal, self.ctx.evaluator.mod_switch_to, self.values[ref], self.ctx.parms_ids[level]
            )
        return self.switched[ref, level]

    def form(self, f: Linear, level: int) -> Any:
        """The linear form ``f`` at ``level`` (new objects: values never change in place)."""
        if (f, level) in self.forms:
            return self.forms[f, level]
        ev = self.ctx.evaluator
        ct = None
        for ref, coef in f.terms:
            value = self.at(ref, level)
            term = value if coef == 1 else fresh(self.ctx.seal, ev.multiply_plain, value, self.ctx.scalar(coef))
            ct = term if ct is None else fresh(self.ctx.seal, ev.add, ct, term)
        if ct is None:
            ct = self.constant(f.const)
            ev.mod_switch_to_inplace(ct, self.ctx.parms_ids[level])
        elif f.const:
            ct = fresh(self.ctx.seal, ev.add_plain, ct, self.ctx.scalar(f.const))
        self.forms[f, level] = ct
        return ct

    def multiply(self, ref: int, depth: int, a: Linear, b: Linear) -> None:
        """Product ``ref`` (of depth ``depth``) of two forms, at their level, relinearized, then switched down."""
        ev = self.ctx.evaluator
        level = max(self.level_of(a), self.level_of(b))
        product = fresh(self.ctx.seal, ev.multiply, self.form(a, level), self.form(b, level))
        ev.relinearize_inplace(product, self.relin_keys)
        target = max(level, self.levels[depth])
        if target > level:
            ev.mod_switch_to_inplace(product, self.ctx.parms_ids[target])
        self.put(ref, product, target)
