"""A straight-line program over slot vectors mod t: what the batched (leveled BFV) path evaluates.

Every value is a vector of ``t``-residues, one per slot (one row of the table per slot). A program reads
``n_inputs`` encrypted input vectors (bits the client encodes) and computes with two kinds of step:

- a *linear form* ``const + sum coef_i * value_i`` (clear integer coefficients: additions and
  multiplications by clear scalars, free of noise growth worth counting);
- a *product* of two linear forms (one ciphertext multiplication and one relinearization: the only costly
  step, and the only one that raises the multiplicative depth).

The outputs are linear forms. :meth:`SlotProgram.evaluate` runs a program on clear integers (the oracle of the
encrypted evaluation: exact, the same residues); :mod:`.seal_bfv` runs it on ciphertexts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Linear", "ProgramBuilder", "SlotProgram"]


@dataclass(frozen=True)
class Linear:
    """``const + sum(coef * value[ref])``: refs index the program's values (inputs first, then products)."""

    terms: tuple[tuple[int, int], ...]  # (ref, coef), refs increasing, coefs nonzero
    const: int = 0

    @classmethod
    def of(cls, terms: dict[int, int], const: int = 0) -> Linear:
        return cls(tuple(sorted((r, c) for r, c in terms.items() if c != 0)), const)

    @classmethod
    def constant(cls, value: int) -> Linear:
        return cls((), int(value))

    @classmethod
    def value(cls, ref: int) -> Linear:
        return cls(((ref, 1),), 0)

    @property
    def is_constant(self) -> bool:
        return not self.terms

    def scaled(self, k: int) -> Linear:
        return Linear.of({r: c * k for r, c in self.terms}, self.const * k)

    def __add__(self, other: Linear) -> Linear:
        terms = dict(self.terms)
        for r, c in other.terms:
            terms[r] = terms.get(r, 0) + c
        return Linear.of(terms, self.const + other.const)

    def __sub__(self, other: Linear) -> Linear:
        return self + other.scaled(-1)


@dataclass(frozen=True)
class SlotProgram:
    """Inputs, products (each of two linear forms) and output forms, with every value's depth."""

    n_inputs: int
    products: tuple[tuple[Linear, Linear], ...]
    outputs: tuple[Linear, ...]
    depths: tuple[int, ...]  # multiplicative depth of each value (inputs 0)

    @property
    def depth(self) -> int:
        """Multiplicative depth of the outputs."""
        return max([_form_depth(form, self.depths) for form in self.outputs], default=0)

    @property
    def n_products(self) -> int:
        return len(self.products)

    def to_dict(self) -> dict[str, Any]:
        """The program as JSON data (depths are not stored: :meth:`from_dict` computes them)."""

        def form(f: Linear) -> list[Any]:
            return [f.const, [list(term) for term in f.terms]]

        return {
            "n_inputs": self.n_inputs,
            "products": [[form(a), form(b)] for a, b in self.products],
            "outputs": [form(f) for f in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Any) -> SlotProgram:
        """A program of :meth:`to_dict`'s data, checked: every reference to an input or an earlier product,
        integers only; raises ValueError."""
        try:
            builder = ProgramBuilder(_count(data["n_inputs"]))
            for a, b in data["products"]:
                known = builder.n_inputs + len(builder.products)
                builder.multiply(_form(a, known), _form(b, known))  # in order: refs below ``known``
            known = builder.n_inputs + len(builder.products)
            outputs = [_form(f, known) for f in data["outputs"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a slot program ({error})") from None
        if len(builder.products) != len(data["products"]):
            raise ValueError("not a slot program (a product is repeated or of a constant)")
        return builder.build(outputs)

    def used_inputs(self) -> np.ndarray:
        """Which inputs any product or output reads (bool, (n_inputs,))."""
        used = np.zeros(self.n_inputs, dtype=bool)
        for form in [f for pair in self.products for f in pair] + list(self.outputs):
            for ref, _ in form.terms:
                if ref < self.n_inputs:
                    used[ref] = True
        return used

    def evaluate(self, inputs: np.ndarray, t: int) -> np.ndarray:
        """The outputs (n_outputs, slots) for clear inputs (n_inputs, slots), mod ``t`` (the encrypted path's oracle)."""
        inputs = np.asarray(inputs, dtype=np.int64)
        if inputs.shape[0] != self.n_inputs:
            raise ValueError(f"the program reads {self.n_inputs} inputs, got {inputs.shape[0]}")
        values: list[np.ndarray] = list(inputs % t)

        def form(f: Linear) -> np.ndarray:
            out = np.full(inputs.shape[1:], f.const % t, dtype=np.int64)
            for ref, coef in f.terms:
                out = (out + (coef % t) * values[ref]) % t
            return out

        for a, b in self.products:
            values.append(form(a) * form(b) % t)
        return np.stack([form(f) for f in self.outputs]) if self.outputs else np.zeros((0, *inputs.shape[1:]), np.int64)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**8:
        raise ValueError(f"{value!r} is not a count")
    return value


def _form(data: Any, known: int) -> Linear:
    """A linear form of ``[const, [[ref, coef], ...]]`` whose refs are below ``known``."""
    const, terms = data
    refs = [_count(ref) for ref, _ in terms]
    if any(ref >= known for ref in refs) or len(set(refs)) != len(refs):
        raise ValueError("a form refers to a value not computed before it, or twice to one")
    for value in [const, *(coef for _, coef in terms)]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
    return Linear.of(dict(zip(refs, (coef for _, coef in terms))), const)


def _form_depth(form: Linear, depths: tuple[int, ...] | list[int]) -> int:
    return max((depths[ref] for ref, _ in form.terms), default=0)


@dataclass
class ProgramBuilder:
    """Builds a :class:`SlotProgram`; equal products are made once."""

    n_inputs: int
    products: list[tuple[Linear, Linear]] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    _seen: dict[tuple[Linear, Linear], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.depths = [0] * self.n_inputs

    def input(self, index: int) -> Linear:
        if not 0 <= index < self.n_inputs:
            raise IndexError(f"input {index} of {self.n_inputs}")
        return Linear.value(index)

    def depth(self, form: Linear) -> int:
        return _form_depth(form, self.depths)

    def multiply(self, a: Linear, b: Linear) -> Linear:
        """``a * b``: free when either is a constant, else one product (shared with an equal one)."""
        if a.is_constant:
            return b.scaled(a.const)
        if b.is_constant:
            return a.scaled(b.const)
        key = (a, b) if (a.terms, a.const) <= (b.terms, b.const) else (b, a)
        ref = self._seen.get(key)
        if ref is None:
            ref = self._seen[key] = self.n_inputs + len(self.products)
            self.products.append(key)
            self.depths.append(max(self.depth(a), self.depth(b)) + 1)
        return Linear.value(ref)

    def build(self, outputs: list[Linear]) -> SlotProgram:
        return SlotProgram(self.n_inputs, tuple(self.products), tuple(outputs), tuple(self.depths))
