"""Private inference: greedy generation through the workers, and task accuracy by exact match."""

from __future__ import annotations

import copy

import pytest
from requires import require

torch = require("torch", "lora")
require("transformers", "lora")
peft = require("peft", "lora")

from veilml.models.lora import (
    ByteTokenizer,
    default_lora_config,
    local_executor,
    private_generate,
    private_model,
    remote_linear_weights,
    shipment_examples,
    task_accuracy,
    tiny_llama,
)
from veilml.models.lora.generation import greedy_generate

TOKENIZER = ByteTokenizer()
EOS = TOKENIZER.eos_token_id
TINY = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def models():
    """A LoRA model with non-zero adapters, in float and patched onto a clear worker."""
    torch.manual_seed(0)
    base = tiny_llama(**TINY)
    weights = remote_linear_weights(base)
    float_model = peft.get_peft_model(base, default_lora_config(base))
    with torch.no_grad():
        for name, parameter in float_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)  # as after training: the adapters change the outputs
    executor = local_executor(weights, "clear")
    private = private_model(copy.deepcopy(float_model), executor)
    return float_model, private, executor, weights


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy machine more spin against each other (these tiny models gain nothing from them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plain_generate(model, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy generate, cut at the end of text."""
    ids = torch.tensor([TOKENIZER.encode(prompt)])
    output = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=EOS, eos_token_id=EOS)
    tokens = output[0, ids.shape[1] :].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def test_private_generate_equals_plain_generate(models):
    float_model, private, executor, _ = models
    prompt = shipment_examples(1, "eval")[0].prompt
    result = private_generate(private, TOKENIZER, executor, prompt, max_new_tokens=12)
    tokens = plain_generate(private, prompt, 12)
    assert result.text == TOKENIZER.decode(tokens) and result.new_tokens == len(tokens) > 0
    assert result.prompt == prompt and result.seconds > 0 and result.tokens_per_second > 0
    assert result.bytes_sent > 0 and result.bytes_received > 0  # every token's projections went to the worker
    # 8-bit integer products: this random model's nearly tied logits soon choose otherwise than in float
    assert tokens != plain_generate(float_model, prompt, 12)


def test_private_generate_refuses_a_model_not_on_that_executor(models):
    float_model, private, _, weights = models
    prompt, other = "Shipment note:", local_executor(weights, "clear")
    with pytest.raises(ValueError, match="locally"):
        private_generate(float_model, TOKENIZER, other, prompt)
    with pytest.raises(ValueError, match="another executor"):
        private_generate(private, TOKENIZER, other, prompt)


def test_batched_greedy_generation_matches_one_prompt_at_a_time(models):
    _, private, _, _ = models
    prompts = [e.prompt for e in shipment_examples(3, "eval")]
    together = greedy_generate(private, TOKENIZER, prompts, max_new_tokens=6)  # left-padded to one batch
    assert together == [plain_generate(private, prompt, 6) for prompt in prompts]
    private.train()
    greedy_generate(private, TOKENIZER, prompts[:1], max_new_tokens=1)
    assert private.training  # generation runs in eval mode and puts the mode back


class ScriptedModel(torch.nn.Module):
    """Answers each prompt (left-padded with the end-of-text token) with a scripted continuation."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__()
        self.replies = replies

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = TOKENIZER.decode([t for t, m in zip(ids, mask) if m])
            reply = (TOKENIZER.encode(self.replies[prompt]) + [EOS] * max_new_tokens)[:max_new_tokens]
            rows.append(ids + reply)
        return torch.tensor(rows)


def test_task_accuracy_counts_exact_matches():
    examples = shipment_examples(5, "eval")
    a = [e.answer for e in examples]
    replies = {
        examples[0].prompt: " " + a[0],  # right
        examples[1].prompt: " " + a[1] + "0",  # one digit too many: wrong
        examples[2].prompt: " " + a[2] + "\nThe end",  # right: only the first line counts
        examples[3].prompt: " " + a[3].lower(),  # wrong case: wrong
        examples[4].prompt: a[4],  # right: surrounding spaces do not count
    }
    model = ScriptedModel(replies)
    result = task_accuracy(model, TOKENIZER, examples, batch_size=2, max_new_tokens=40)
    assert (result.correct, result.total) == (3, 5) and result.accuracy == pytest.approx(0.6)
    assert result.predictions == [a[0], a[1] + "0", a[2], a[3].lower(), a[4]]
    with pytest.raises(ValueError, match="no example"):
        task_accuracy(model, TOKENIZER, [])


def test_task_accuracy_scores_the_private_models_greedy_answers(models):
    _, private, _, _ = models
    examples = shipment_examples(3, "eval")
    result = task_accuracy(private, TOKENIZER, examples, batch_size=2, max_new_tokens=6)
    expected = [TOKENIZER.decode(plain_generate(private, e.prompt, 6)).strip().split("\n", 1)[0].strip() for e in examples]
    assert result.predictions == expected
    assert (result.total, result.correct) == (3, 0)  # a random model knows no answer
