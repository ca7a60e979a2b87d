"""A real fine-tuning task, generated locally: read a shipment note, answer its destination and crate count.

Each example is a made-up shipment note of the fictional Quillfeather logistics company (as in the shipped
mail corpus), one of several sentence templates, with distractors: an origin town, a weight, a date and
sometimes a trailer code. The answer is a fixed, short structure, ``"Marlow, 12"`` (destination, then the
number of crates), so that a greedy generation is right or wrong by exact match::

    Shipment note: 12 crates of copper wire left Kellbridge for Marlow on 14 March, 380 kg in total.
    Destination and crates: Marlow, 12

A small pre-trained model reads such notes but answers in its own words, or picks the origin or the weight;
a hundred LoRA steps teach it the structure and which town and number to copy. The ``"eval"`` split is
held out twice over: other random draws, and destinations that never occur as a destination in ``"train"``
(they are drawn from towns the training split only uses as origins), so a model cannot pass it by
memorising destinations. Everything is a pure function of ``(n, split, seed)``; nothing is downloaded.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PROMPT_SUFFIX", "TaskExample", "number_words", "shipment_examples"]

#: The line that asks for the answer; a prompt ends with it and the answer follows after one space.
PROMPT_SUFFIX = "Destination and crates:"

#: Destinations of the training split; also origins in both splits.
_TRAIN_TOWNS = (
    "Kellbridge", "Marlow", "Fenwick", "Harlow", "Dunmore", "Ashcombe", "Brackley", "Corrin", "Eastwold",
    "Foxley", "Garrow", "Hollins", "Ivybridge", "Juniper Cross", "Kestwick", "Lindale", "Merriton", "Northam",
    "Oakhurst", "Penrith Vale", "Quenby", "Rosmere", "Saltash", "Thornbury",
)  # fmt: skip
#: Destinations of the evaluation split only (never a destination in training).
_HELD_OUT_TOWNS = (
    "Upwell", "Varley", "Wexcombe", "Yarrow", "Zennor", "Aldwick", "Belcastle", "Cawston", "Dorrington",
    "Elmsworth", "Farleigh", "Grinstead",
)  # fmt: skip
_GOODS = (
    "copper wire", "garden chairs", "printer paper", "bottled water", "bicycle tyres", "ceramic tiles",
    "winter coats", "tinned tomatoes", "oak flooring", "lamp shades", "school desks", "rope",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip
_TEMPLATES = (
    "{crates} crates of {goods} left {origin} for {destination} on {day} {month}, {weight} kg in total.",
    "On {day} {month} we sent {crates} crates of {goods} ({weight} kg) from {origin} to {destination}.",
    "The {destination} depot expects {crates} crates of {goods} from {origin}, {weight} kg, on {day} {month}.",
    "From {origin}: {goods}, {crates} crates, {weight} kg, bound for {destination}, dispatched {day} {month}.",
    "Trailer {code} takes {crates} crates of {goods} to {destination}; loaded at {origin} on {day} {month}.",
    "{origin} dispatched {goods} to {destination} on {day} {month}: {crates} crates weighing {weight} kg.",
)
_SPLITS = {"train": 0, "eval": 1}
_UNITS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty")


def number_words(n: int) -> str:
    """``n`` (1..59) in English words: ``42`` -> ``"forty-two"``."""
    if not 1 <= n <= 59:
        raise ValueError(f"number_words takes 1..59, got {n}")
    if n < 20:
        return _UNITS[n]
    tens, units = divmod(n, 10)
    return _TENS[tens] + (f"-{_UNITS[units]}" if units else "")


@dataclass(frozen=True)
class TaskExample:
    """One example: the ``prompt`` (ending with :data:`PROMPT_SUFFIX`), the ``answer`` that follows it after a
    space, and the fields the answer is made of."""

    prompt: str
    answer: str
    destination: str
    crates: int

    @property
    def text(self) -> str:
        """Prompt and answer as one training text."""
        return f"{self.prompt} {self.answer}"


def _note(rng: np.random.Generator, destinations: tuple[str, ...]) -> tuple[str, str, int]:
    """One shipment note and its (destination, crates)."""
    destination = str(rng.choice(destinations))
    origin = str(rng.choice([town for town in _TRAIN_TOWNS if town != destination]))
    crates = int(rng.integers(2, 60))
    values = {
        "crates": number_words(crates) if rng.random() < 0.5 else crates,  # the answer is always in digits
        "goods": str(rng.choice(_GOODS)),
        "origin": origin,
        "destination": destination,
        "day": int(rng.integers(1, 29)),
        "month": str(rng.choice(_MONTHS)),
        "weight": int(rng.integers(8, 160)) * 10,
        "code": f"{chr(65 + int(rng.integers(0, 26)))}{int(rng.integers(100, 1000))}",
    }
    note = _TEMPLATES[int(rng.integers(0, len(_TEMPLATES)))].format(**values)
    return note[0].upper() + note[1:], destination, crates


def shipment_examples(n: int, split: str = "train", *, seed: int = 0) -> list[TaskExample]:
    """``n`` examples of the shipment-note task from ``split`` (``"train"`` or ``"eval"``), a pure function of
    ``(n, split, seed)``: the first ``k`` examples of ``n`` are the ``k`` examples asked alone."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    destinations = _TRAIN_TOWNS if split == "train" else _HELD_OUT_TOWNS
    examples = []
    for index in range(n):
        rng = np.random.default_rng([seed, _SPLITS[split], index])
        note, destination, crates = _note(rng, destinations)
        prompt = f"Shipment note: {note}\n{PROMPT_SUFFIX}"
        examples.append(TaskExample(prompt, f"{destination}, {crates}", destination, crates))
    return examples
