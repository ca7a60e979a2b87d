"""The choices a lowering takes, as enums: the estimators' ``encoding=`` and ``leaf_lookups=`` strings are
converted once, here, with the messages users have always had for a bad value."""

from __future__ import annotations

from enum import StrEnum

from veilml.compiler.encodings import EncodingKind, InputEncoding

__all__ = ["ENCODINGS", "EncodingChoice", "LeafStage", "candidate_encodings"]


class EncodingChoice(StrEnum):
    """What ``encoding=`` asks for: one kind of :class:`~veilml.compiler.InputEncoding`, or the cheapest
    of :data:`ENCODINGS` (``AUTO``)."""

    THERMOMETER = "thermometer"
    IDENTITY = "identity"
    CHUNKED = "chunked"
    THRESHOLDS = "thresholds"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str) -> EncodingChoice:
        """The choice named ``value``; an unknown name gets :meth:`EncodingKind.parse`'s message."""
        if value == cls.AUTO:
            return cls.AUTO
        return cls(EncodingKind.parse(value).value)


class LeafStage(StrEnum):
    """What ``leaf_lookups=`` asks for (see :func:`~.ensemble.lower_candidates`)."""

    INDICATORS = "indicators"
    PAIRED = "paired"
    SUBTREES = "subtrees"
    PREFIXES = "prefixes"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str) -> LeafStage:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(stage.value) for stage in cls)
            raise ValueError(f"leaf_lookups must be one of {names}, got {value!r}") from None


#: the encodings ``encoding="auto"`` chooses among (every one model-independent), ties to the first
ENCODINGS = (EncodingKind.THERMOMETER, EncodingKind.CHUNKED, EncodingKind.IDENTITY)


def candidate_encodings(
    n_features: int, n_bits: int, choice: EncodingChoice | str, thresholds: tuple[tuple[int, int], ...] = ()
) -> list[InputEncoding]:
    """The encodings ``choice`` names: one, every split of the bits for ``"chunked"``, all of
    :data:`ENCODINGS` for ``"auto"``; ``"thresholds"`` encrypts the comparisons ``thresholds``."""
    choice = EncodingChoice.parse(choice)
    if choice is EncodingChoice.AUTO:
        return [enc for kind in ENCODINGS for enc in candidate_encodings(n_features, n_bits, kind)]
    kind, qmax = EncodingKind(choice.value), 2**n_bits - 1
    if kind is EncodingKind.CHUNKED:
        return [InputEncoding(kind, n_features, 0, qmax, low) for low in range(1, n_bits)]
    if kind is EncodingKind.THRESHOLDS:  # model-dependent: exactly the comparisons this model makes
        return [InputEncoding(kind, n_features, 0, qmax, thresholds=thresholds)]
    return [InputEncoding(kind, n_features, 0, qmax)]
