"""The generated shipment-note task: deterministic, well-formed, held-out split disjoint; its tokenized batches."""

from __future__ import annotations

import re

import pytest
from requires import require

from veilml.models.lora.task import PROMPT_SUFFIX, number_words, shipment_examples

torch = require("torch", "lora")

from veilml.models.lora import ByteTokenizer, TaskCollator, task_batches, task_features
from veilml.models.lora.batching import IGNORE_INDEX, pad_id

TOKENIZER = ByteTokenizer()


def test_examples_are_a_pure_function_of_n_split_and_seed():
    first = shipment_examples(40, "train", seed=3)
    assert first == shipment_examples(40, "train", seed=3)
    assert shipment_examples(15, "train", seed=3) == first[:15]  # the first k of n are the k asked alone
    assert shipment_examples(40, "train", seed=4) != first
    assert len({e.prompt for e in first}) == len(first)  # no repeated note
    assert shipment_examples(0) == []


def test_examples_are_well_formed():
    for example in shipment_examples(200, "train") + shipment_examples(100, "eval"):
        note, question = example.prompt.split("\n")
        assert note.startswith("Shipment note: ") and question == PROMPT_SUFFIX
        assert example.answer == f"{example.destination}, {example.crates}" and 2 <= example.crates <= 59
        assert example.text == f"{example.prompt} {example.answer}"
        assert example.destination in note
        # the crate count is in the note, in digits or in words
        assert re.search(rf"\b{example.crates} crates\b", note) or number_words(example.crates) in note.lower()


def test_the_eval_split_is_held_out():
    train, evaluation = shipment_examples(2000, "train"), shipment_examples(500, "eval")
    train_destinations = {e.destination for e in train}
    eval_destinations = {e.destination for e in evaluation}
    assert not train_destinations & eval_destinations  # destinations never seen as destinations in training
    assert len(eval_destinations) >= 10 and len(train_destinations) >= 20
    assert not {e.prompt for e in train} & {e.prompt for e in evaluation}


def test_number_words():
    assert [number_words(n) for n in (1, 13, 20, 42, 59)] == ["one", "thirteen", "twenty", "forty-two", "fifty-nine"]
    with pytest.raises(ValueError):
        number_words(60)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        shipment_examples(3, "test")
    with pytest.raises(ValueError, match="n must be"):
        shipment_examples(-1)


def test_features_label_the_answer_only():
    example = shipment_examples(1)[0]
    (feature,) = task_features([example], TOKENIZER)
    prompt = TOKENIZER.encode(example.prompt)
    answer = TOKENIZER.encode(" " + example.answer) + [TOKENIZER.eos_token_id]
    assert feature["input_ids"] == prompt + answer
    assert feature["labels"] == [IGNORE_INDEX] * len(prompt) + answer
    (everything,) = task_features([example], TOKENIZER, answer_only=False)
    assert everything["labels"] == everything["input_ids"]
    with pytest.raises(ValueError, match="max_length"):
        task_features([example], TOKENIZER, max_length=len(prompt))


def test_collator_and_batches_pad_on_the_right():
    examples = shipment_examples(5)
    features = task_features(examples, TOKENIZER)
    batch = TaskCollator(pad_id(TOKENIZER))(features[:2])
    width = max(len(f["input_ids"]) for f in features[:2])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    for row, feature in enumerate(features[:2]):
        n = len(feature["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all() and batch["input_ids"][row, n:].eq(256).all()
    batches = task_batches(examples, TOKENIZER, batch_size=2)
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    assert [len(b["input_ids"]) for b in task_batches(examples, TOKENIZER, batch_size=2, drop_last=True)] == [2, 2]
    fixed = task_batches(examples, TOKENIZER, batch_size=2, pad_to=200)
    assert all(b["input_ids"].shape[1] == 200 for b in fixed)
    with pytest.raises(ValueError, match="pad_to"):
        TaskCollator(0, pad_to=10)(features[:1])
