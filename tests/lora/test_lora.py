"""Private LoRA fine-tuning on a tiny offline GPT-2: remote layers on the clear backend vs float."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import numpy as np
import pytest
from requires import require

torch = require("torch", "lora")
require("transformers", "lora")
peft = require("peft", "lora")

from veilml.models.lora import (
    DEFAULT_REMOTE_PATTERNS,
    ByteTokenizer,
    LoraTrainer,
    RemoteLinear,
    default_lora_config,
    load_corpus,
    load_remote_weights,
    local_executor,
    make_batches,
    outsource_linear_layers,
    remote_layer_names,
    remote_linear_weights,
    save_remote_weights,
    smollm2,
    tiny_gpt2,
    tiny_llama,
    unwrap_peft,
)
from veilml.quantization import QuantizedWeight, quantize_rows

SEQ = 32
TINY = {"n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": SEQ}


def peft_gpt2(seed: int = 0, **lora: float):
    torch.manual_seed(seed)
    model = tiny_gpt2(seed=seed, **TINY)
    return peft.get_peft_model(model, default_lora_config(model, **lora))


@pytest.fixture(scope="module")
def data():
    train = make_batches(load_corpus("train"), seq_len=SEQ, batch_size=8)
    evaluation = make_batches(load_corpus("eval"), seq_len=SEQ, batch_size=8)
    return train, evaluation


def test_import_does_not_load_torch():
    code = (
        "import sys, veilml, veilml.models.lora as l; print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_corpus_and_tokenizer():
    tokenizer = ByteTokenizer()
    train, evaluation = load_corpus("train"), load_corpus("eval")
    assert len(load_corpus()) > 30_000 and train and evaluation and evaluation not in train
    text = "Café – Kellbridge"
    assert tokenizer.decode(tokenizer.encode(text, add_eos=True)) == text
    batches = make_batches(text * 10, seq_len=8, batch_size=2)
    assert batches[0]["input_ids"].shape == (2, 8) and all(b["input_ids"].max() < tokenizer.vocab_size for b in batches)
    with pytest.raises(ValueError, match="split must be"):
        load_corpus("test")


# (g) orientation of the extracted weights ------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [lambda: tiny_gpt2(**TINY), lambda: tiny_llama(hidden_size=32, max_position_embeddings=SEQ)],
    ids=["conv1d", "linear"],
)
def test_weights_are_oriented_x_at_w(build):
    model = build()
    weights = remote_linear_weights(model)
    assert weights and all(any(n.endswith(p[1:]) for p in DEFAULT_REMOTE_PATTERNS) for n in weights)
    assert not any("wte" in n or "embed" in n or "lm_head" in n for n in weights)
    x = torch.randn(5, 200)
    for name, (weight, bias) in weights.items():
        module = model.get_submodule(name)
        rows = x[:, : weight.shape[0]]
        expected = module(rows).detach().numpy()
        got = rows.numpy() @ weight + (0 if bias is None else bias)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_peft_model_gives_the_same_names_and_weights():
    plain = remote_linear_weights(tiny_gpt2(**TINY))
    model = peft_gpt2()
    wrapped = remote_linear_weights(model)
    assert list(wrapped) == list(plain)
    for name in plain:
        np.testing.assert_array_equal(wrapped[name][0], plain[name][0])
        np.testing.assert_array_equal(wrapped[name][1], plain[name][1])
    model.merge_adapter()  # adapters folded into the base weights must never reach a worker
    with pytest.raises(ValueError, match="merged"):
        remote_linear_weights(model)


def test_save_and_load_remote_weights(tmp_path):
    model = tiny_gpt2(**TINY)
    weights = remote_linear_weights(model)
    path = save_remote_weights(weights, tmp_path / "remote.safetensors")
    model.save_pretrained(tmp_path / "model")
    for loaded in (load_remote_weights(path), load_remote_weights(tmp_path / "model")):
        assert list(loaded) == list(weights)
        for name, (weight, bias) in weights.items():
            np.testing.assert_array_equal(loaded[name][0], weight)
            np.testing.assert_array_equal(loaded[name][1], bias)
    only_attention = load_remote_weights(path, ["*.attn.*"])
    assert sorted(only_attention) == sorted(n for n in weights if ".attn." in n)
    with pytest.raises(ValueError, match="not written by save_remote_weights"):
        load_remote_weights(next((tmp_path / "model").glob("*.safetensors")))
    with pytest.raises(ValueError, match="matches the patterns"):
        load_remote_weights(path, ["*.nothing"])
    with pytest.raises(TypeError, match="single string"):
        load_remote_weights(path, "*.attn.*")


# (a) gradients through the clear backend -------------------------------------------------------


def test_lora_gradients_match_float(data):
    train, _ = data
    reference = peft_gpt2()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # PEFT starts lora_B at zero: randomise it so every adapter gets a gradient
        for name, parameter in reference.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    remote = copy.deepcopy(reference)
    outsource_linear_layers(remote, local_executor(remote_linear_weights(reference), "clear", weight_bits=8, input_bits=8))

    batch = train[0]
    losses = []
    for model in (reference, remote):
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
    remote_grads = {name: p.grad for name, p in remote.named_parameters() if p.requires_grad}
    cosines, errors, ratios = {}, {}, {}
    for name, p_float in reference.named_parameters():
        if p_float.requires_grad:
            expected, got = p_float.grad.flatten(), remote_grads.pop(name).flatten()
            cosines[name] = torch.nn.functional.cosine_similarity(expected, got, dim=0).item()
            errors[name] = ((got - expected).norm() / expected.norm()).item()  # sees scale as well as direction
            ratios[name] = (got.norm() / expected.norm()).item()
    assert not remote_grads
    worst = min(cosines, key=cosines.get)
    worst_error = max(errors, key=errors.get)
    print(
        f"\n{len(cosines)} LoRA tensors; cosine min {cosines[worst]:.5f} ({worst}), mean {np.mean(list(cosines.values())):.5f}; "
        f"relative L2 error max {errors[worst_error]:.4f} ({worst_error}); norm ratio {min(ratios.values()):.4f}..{max(ratios.values()):.4f}; "
        f"loss float {losses[0]:.5f} clear {losses[1]:.5f}"
    )
    assert len(cosines) == 16 and all(".lora_" in name for name in cosines)
    # Measured on this batch (8-bit weights and rows): cosine >= 0.99875, relative L2 error <= 0.050
    # (h.0.attn.c_attn.lora_A; <= 0.059 on the next two batches), norm ratio 0.987..1.003, loss gap 3.7e-4.
    # A backward returning half of g @ W.T gives errors of 0.38-0.91 on the 14 tensors whose gradient crosses a remote
    # backward (all but the last c_proj's), norm ratios down to 0.21 and a cosine of 0.50.
    assert cosines[worst] >= 0.995, f"{worst}: cosine {cosines[worst]}"
    assert errors[worst_error] <= 0.1, f"{worst_error}: relative L2 error {errors[worst_error]}"
    assert all(abs(ratio - 1.0) <= 0.03 for ratio in ratios.values()), ratios
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def exactly_dequantized(rows: np.ndarray, matrix: np.ndarray, n_bits: int) -> np.ndarray:
    """``rows @ matrix`` with each row on its own ``n_bits`` grid, computed one row at a time (per token)."""
    out = []
    for row in rows:
        codes, scale, zero = quantize_rows(row[None, :], n_bits)
        out.append(((codes - zero[:, None]) * scale[:, None]) @ matrix)
    return np.concatenate(out)


@pytest.mark.parametrize("weight_bits, input_bits", [(8, 8), (6, 7)])
def test_clear_executor_is_exact_integer_algebra(weight_bits, input_bits):
    """On the clear backend nothing is approximate but the quantization itself: forward and backward equal the
    products of the per-token dequantized rows with the per-channel dequantized weight, to float rounding."""
    weights = remote_linear_weights(tiny_gpt2(**TINY))
    executor = local_executor(weights, "clear", weight_bits=weight_bits, input_bits=input_bits)
    generator = np.random.default_rng(3)
    for name, (weight, bias) in weights.items():
        qw = QuantizedWeight.from_float(weight, weight_bits)
        d_in, d_out = weight.shape
        # rows of very different magnitudes, a constant row and a zero row: each must keep its own grid
        x = generator.normal(size=(5, d_in)) * np.array([1e-3, 1.0, 1e3, 1.0, 1.0])[:, None] + 0.5
        x[3], x[4] = 2.5, 0.0
        g = generator.normal(size=(5, d_out)) * np.array([1e-4, 1.0, 1e2, 1.0, 1.0])[:, None]
        g[3], g[4] = -1.5, 0.0
        y, dx = executor.forward(name, x), executor.backward(name, g)
        expected_y = exactly_dequantized(x, qw.dequantize(), input_bits) + bias
        # g @ W.T = (g * scale) @ q.T: the weight scales are folded into g, which is quantized per row
        expected_dx = exactly_dequantized(g * qw.scale[None, :], qw.q.T.astype(np.float64), input_bits)
        for got, expected in ((y, expected_y), (dx, expected_dx)):
            assert got.shape == expected.shape and got.dtype == np.float64
            # per row: the rows span 7 orders of magnitude; measured agreement <= 8e-16 of each row's largest value
            for got_row, expected_row in zip(got, expected):
                np.testing.assert_allclose(got_row, expected_row, rtol=1e-9, atol=1e-9 * np.abs(expected_row).max(), err_msg=name)
        assert np.all(dx[4] == 0) and np.array_equal(y[4], bias)
        # against the float products, each non-zero row within its own precision: worst row error measured
        # 1.2 % of the row's largest value with 8/8 bits and 4.5 % with 6/7 bits (bounds about twice that)
        for got, exact in ((y - bias, x @ weight), (dx, g @ weight.T)):
            row_error = np.abs(got[:4] - exact[:4]).max(axis=1) / np.abs(exact[:4]).max(axis=1)
            assert row_error.max() <= {8: 0.025, 6: 0.09}[weight_bits], (name, row_error)


# (b) fine-tuning through the clear backend --------------------------------------------------


def test_clear_fine_tuning_matches_float(data):
    train, evaluation = data
    results = {}
    for mode in ("float", "clear"):
        model = tiny_gpt2(**TINY)
        executor = None if mode == "float" else local_executor(remote_linear_weights(model), "clear", weight_bits=8, input_bits=8)
        trainer = LoraTrainer(model, executor=executor, max_steps=200, learning_rate=1e-2, seed=0, progress=False)
        before = trainer.evaluate(evaluation)["eval_loss"]
        started = time.perf_counter()
        trainer.train(train)
        per_step = (time.perf_counter() - started) / 200
        results[mode] = (before, trainer.evaluate(evaluation)["eval_loss"], per_step)
    print("\n" + "; ".join(f"{m}: eval loss {b:.4f} -> {a:.4f}, {1000 * t:.1f} ms/step" for m, (b, a, t) in results.items()))
    float_loss, clear_loss = results["float"][1], results["clear"][1]
    assert float_loss < 0.8 * results["float"][0], "float LoRA did not learn: the comparison would say nothing"
    # Measured eval-loss gap after 200 steps: 0.07 % (4.4678 vs 4.4647; 0.22 % and 0.03 % with seeds 1 and 2).
    # A backward returning half of g @ W.T ends at 4.4103, 1.2 % away, inside the former 3 % bound.
    assert abs(clear_loss - float_loss) <= 0.005 * float_loss


# (c) the client holds none of the outsourced weights -------------------------------------------


def test_client_holds_no_outsourced_weight():
    model = peft_gpt2()
    weights = remote_linear_weights(model)
    originals = {name: unwrap_peft(model).get_submodule(name).get_base_layer() for name in weights}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    embeddings = model.get_input_embeddings().weight

    names = outsource_linear_layers(model, local_executor(weights, "clear"))
    assert names == list(weights) == remote_layer_names(model)
    for name, (weight, bias) in weights.items():
        layer = unwrap_peft(model).get_submodule(name)  # the PEFT LoRA layer
        assert isinstance(layer.base_layer, RemoteLinear)
        shapes = {weight.shape, weight.T.shape, bias.shape}
        held = [(n, tuple(t.shape)) for n, t in [*layer.named_parameters(), *layer.named_buffers()] if tuple(t.shape) in shapes]
        assert not held, f"{name} still holds {held}"
        assert originals[name].weight.numel() == 0 and originals[name].bias.numel() == 0  # storage freed
    assert not [key for key in model.state_dict() if "base_layer" in key]
    local = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert sum(np.prod(s) for s in local.values()) == sum(p.numel() for p in model.parameters())
    kept = {n for n in local if "lora_" not in n}
    assert all(".ln_" in n or n.endswith(("wte.weight", "wpe.weight")) for n in kept), kept
    assert model.get_input_embeddings().weight is embeddings and model.get_output_embeddings().weight is embeddings
    assert set(lora_before) == {n for n in local if "lora_" in n}
    assert all(torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_outsourcing_checks_before_changing_anything():
    model = peft_gpt2()
    weights = remote_linear_weights(model)
    partial = local_executor({n: w for n, w in weights.items() if ".attn." in n}, "clear")
    with pytest.raises(ValueError, match="do not serve"):
        outsource_linear_layers(model, partial)
    assert remote_layer_names(model) == []
    assert outsource_linear_layers(model, partial, ["*.attn.*"]) == sorted(n for n in weights if ".attn." in n)
    assert outsource_linear_layers(model, partial, ["*.attn.*"]) == []  # idempotent
    with pytest.raises(ValueError, match="already outsourced"):
        remote_linear_weights(model)
    with pytest.raises(ValueError, match="matches the patterns"):
        outsource_linear_layers(tiny_gpt2(**TINY), partial, ["*.nothing"])


# (d) adapters round trip ------------------------------------------------------------------------


def test_saved_adapters_load_back_with_peft(data, tmp_path):
    train, _ = data
    trainer = LoraTrainer(tiny_gpt2(**TINY), max_steps=3, learning_rate=1e-2, progress=False)
    trainer.train(train)
    trainer.save_adapters(tmp_path / "adapters")
    assert (tmp_path / "adapters" / "adapter_model.safetensors").is_file()

    loaded = peft.PeftModel.from_pretrained(tiny_gpt2(**TINY), tmp_path / "adapters").eval()
    trainer.model.eval()
    batch = train[1]["input_ids"]
    with torch.no_grad():
        expected = trainer.model(batch).logits
        assert torch.equal(loaded(batch).logits, expected)
        fresh = LoraTrainer(tiny_gpt2(**TINY), seed=5, progress=False)
        fresh.load_adapters(tmp_path / "adapters")
        assert torch.equal(fresh.model.eval()(batch).logits, expected)


def test_adapters_of_a_remote_model_load_into_a_float_one(data, tmp_path):
    train, _ = data
    model = tiny_gpt2(**TINY)
    trainer = LoraTrainer(model, executor=local_executor(remote_linear_weights(model), "clear"), max_steps=2, progress=False)
    trainer.train(train)
    trainer.save_adapters(tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_gpt2(**TINY), tmp_path)
    remote_adapters = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    float_adapters = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert remote_adapters.keys() == float_adapters.keys()
    assert all(torch.equal(remote_adapters[n], float_adapters[n]) for n in remote_adapters)


# (e) checkpoint and resume ----------------------------------------------------------------------


class CrashAfter:
    """Training data that raises after ``limit`` batches were read: a crash in the middle of a run."""

    def __init__(self, batches, limit):
        self.batches, self.limit, self.reads = batches, limit, 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > self.limit:
            raise KeyboardInterrupt("simulated crash")
        return self.batches[index]


def logged(trainer) -> list[dict]:
    """The trainer's log entries of losses and evaluations."""
    return [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]


def test_resume_after_a_crash_is_bit_exact(data, tmp_path):
    train = data[0][:5]  # 5 batches: the run crosses epochs, so the per-epoch shuffle is resumed too

    def trainer(output_dir):
        model = tiny_gpt2(**TINY, dropout=0.1)
        return LoraTrainer(
            model,
            lora_config=default_lora_config(model, lora_dropout=0.1),
            executor=local_executor(remote_linear_weights(model), "clear"),
            max_steps=7,
            gradient_accumulation_steps=2,
            lr_scheduler_type="linear",
            warmup_steps=2,
            learning_rate=1e-2,
            output_dir=output_dir,
            save_steps=2,
            progress=False,
        )

    straight = trainer(tmp_path / "straight")
    straight.train(train)

    crashed = trainer(tmp_path / "crash")
    with pytest.raises(KeyboardInterrupt):
        crashed.train(CrashAfter(train, limit=2 * 5 + 1))  # dies inside step 6, after checkpoint-4
    assert crashed.last_checkpoint().name == "checkpoint-4"
    resumed = trainer(tmp_path / "crash")
    assert resumed.train(train, resume_from_checkpoint=True).global_step == 7

    final = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    again = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert final.keys() == again.keys()
    assert all(torch.equal(final[n], again[n]) for n in final)
    # every loss and eval entry alike; the Trainer's closing summary (run time, its own mean) differs by nature
    assert logged(straight) == logged(resumed) and len(logged(straight)) == 1  # logging_steps=10: the last step only
    with pytest.raises(ValueError, match="same training data"):
        trainer(tmp_path / "crash").train(train[:4], resume_from_checkpoint=True)


# (f) non-contiguous inputs ----------------------------------------------------------------------


class ContiguityCheck:
    """Wraps an executor and records whether every array it receives is C-contiguous float64."""

    def __init__(self, executor):
        self.executor, self.seen = executor, []
        self.infos = executor.infos
        self.layer = executor.layer

    def _check(self, array):
        self.seen.append(array.flags["C_CONTIGUOUS"] and array.dtype == np.float64)

    def forward(self, name, x):
        self._check(x)
        return self.executor.forward(name, x)

    def backward(self, name, g):
        self._check(g)
        return self.executor.backward(name, g)


def test_non_contiguous_inputs_give_the_same_results():
    weights = remote_linear_weights(tiny_gpt2(**TINY))
    name = "transformer.h.0.mlp.c_fc"
    executor = ContiguityCheck(local_executor(weights, "clear"))
    layer = RemoteLinear(name, executor, 32, 128, max_rows=7)  # several requests per call

    strided = torch.randn(32, 3, 10).permute(2, 1, 0)  # (10, 3, 32), not contiguous
    strided.requires_grad_(True)
    dense = strided.detach().contiguous().requires_grad_(True)
    assert not strided.is_contiguous()
    grad = torch.randn(128, 10, 3).permute(1, 2, 0)  # non-contiguous output gradient
    outputs = []
    for x in (strided, dense):
        y = layer(x)
        y.backward(grad)
        outputs.append((y.detach(), x.grad))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert executor.seen and all(executor.seen)

    weight, bias = (torch.from_numpy(a) for a in weights[name])
    reference = dense.detach() @ weight + bias
    assert outputs[0][0].shape == (10, 3, 128) and outputs[0][0].dtype == torch.float32
    assert torch.allclose(outputs[0][0], reference, atol=0.03 * reference.abs().max().item())
    reference_grad = grad @ weight.T
    assert torch.allclose(outputs[0][1], reference_grad, atol=0.03 * reference_grad.abs().max().item())


def test_remote_linear_checks_shapes():
    executor = local_executor(remote_linear_weights(tiny_gpt2(**TINY)), "clear")
    with pytest.raises(ValueError, match="worker serves"):
        RemoteLinear("transformer.h.0.mlp.c_fc", executor, 32, 64)
    with pytest.raises(KeyError, match="no worker serves"):
        RemoteLinear("transformer.h.9.mlp.c_fc", executor, 32, 128)
    layer = RemoteLinear("transformer.h.0.mlp.c_fc", executor, 32, 128)
    with pytest.raises(ValueError, match="takes 32 features"):
        layer(torch.zeros(2, 31))
    assert layer(torch.zeros(0, 32)).shape == (0, 128)


def test_llama_style_model_trains_remotely(data):
    train, _ = data
    steps = 10
    losses = {}
    for mode in ("float", "clear"):
        model = tiny_llama(hidden_size=32, max_position_embeddings=SEQ)
        executor = None if mode == "float" else local_executor(remote_linear_weights(model), "clear")
        trainer = LoraTrainer(model, executor=executor, max_steps=steps, learning_rate=1e-2, logging_steps=1, progress=False)
        output = trainer.train(train)
        losses[mode] = np.array([entry["loss"] for entry in logged(trainer)])  # one loss per step
        assert output.global_step == steps and output.training_loss == pytest.approx(losses[mode].mean())
        if executor is not None:
            assert len(trainer.remote_layers) == 2 * 7
            assert isinstance(
                unwrap_peft(trainer.model).get_submodule("model.layers.0.self_attn.q_proj").base_layer, RemoteLinear
            )
    gap = np.abs(losses["clear"] - losses["float"]) / losses["float"]
    print(
        f"\nfloat losses {np.round(losses['float'], 4)}; per-step relative gap to clear {' '.join(f'{value:.1e}' for value in gap)}; "
        f"gap of the means {abs(losses['clear'].mean() - losses['float'].mean()) / losses['float'].mean():.1e}"
    )
    assert losses["float"][-3:].mean() < losses["float"][0] - 0.5, "float LoRA did not learn: the comparison would say nothing"
    # Measured per-step gap: <= 1.4e-3 (8.2e-4 at step 1, before any update: the 8-bit forward error), <= 3.0e-3
    # with seeds 1-3. The mean loss of 3 steps agreed to 1.2e-5 only because step errors of both signs cancelled.
    # A backward returning half of g @ W.T moves steps 5-10 by 1.2e-2 to 5.2e-2 (seeds 0-3: 1.9e-2 to 5.2e-2 on some step).
    assert gap.max() <= 5e-3, f"per-step relative loss gap {gap}"


def write_llama_gguf(path, model, rope_theta, tokens, token_types, merges, quantized=()):
    """``model`` (a LlamaForCausalLM) and a byte-level BPE tokenizer as a GGUF file, named and laid out the way
    llama.cpp's converter writes them (Q and K rows permuted per head). Tensors named in ``quantized`` are
    written as Q8_0. Returns the state dict that a loader must give back (Q8_0 tensors dequantized)."""
    gguf = require("gguf", "test")
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")  # byte-level BPE, as SmolLM2's file
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)

    def interleaved(weight, n_heads):  # HF's rotary halves per head -> llama.cpp's interleaved pairs
        head_dim = weight.shape[0] // n_heads
        return weight.reshape(n_heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(weight.shape)

    suffixes = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for layer in range(config.num_hidden_layers):
        names.update({f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{short}.weight" for hf, short in suffixes.items()})
    state = {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}
    assert sorted(state) == sorted(names)
    for hf_name, gguf_name in names.items():
        tensor = state[hf_name]
        if ".attn_q." in gguf_name or ".attn_k." in gguf_name:
            tensor = interleaved(tensor, heads if ".attn_q." in gguf_name else kv_heads)
        if hf_name in quantized:
            codes = gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, codes, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            state[hf_name] = gguf.quants.dequantize(codes, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def test_smollm2_loads_a_local_gguf_file(tmp_path):
    """``smollm2(path)`` reads a GGUF file as SmolLM2's is laid out (llama architecture, byte-level BPE, Q8_0
    tensors): a tiny one written here must come back with the same config, weights and tokenizer."""
    require("gguf", "test")
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()  # byte-level BPE writes every byte as one printable character
    merges = ["t h", "th e", "Ġ the", "e r"]
    tokens = [spelling[byte] for byte in range(256)] + [merge.replace(" ", "") for merge in merges] + ["<|endoftext|>"]
    token_types = [1] * (len(tokens) - 1) + [3]  # normal tokens, then one control token
    eos = len(tokens) - 1
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
        rope_theta=5000.0,
    )  # not the default 10000: a dropped value shows
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from their all-ones init, so that a dropped or misplaced norm shows
        for name, parameter in reference.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    quantized = [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    written = write_llama_gguf(tmp_path / "tiny.gguf", reference, 5000.0, tokens, token_types, merges, quantized)
    with torch.no_grad():
        reference.load_state_dict({name: torch.from_numpy(array) for name, array in written.items()})

    model, tokenizer = smollm2(tmp_path / "tiny.gguf")
    loaded = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and loaded.model_type == "llama"
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
        "eos_token_id",
        "bos_token_id",
    ):
        assert getattr(loaded, key) == getattr(config, key), key
    assert loaded.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)  # stored as float32
    rope = getattr(loaded, "rope_parameters", None) or {"rope_theta": getattr(loaded, "rope_theta", None)}  # transformers 5 / 4
    assert rope["rope_theta"] == 5000.0
    state = model.state_dict()
    assert sorted(state) == sorted(written)
    for name, array in written.items():
        assert state[name].dtype == torch.float32 and np.array_equal(state[name].numpy(), array), name
    ids = torch.tensor([list(range(0, len(tokens), 7))])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, reference(ids).logits)

    text = "the other theme. Café – 42"
    encoded = tokenizer.encode(text)
    assert tokenizer.decode(encoded) == text
    assert tokenizer.convert_ids_to_tokens(encoded[:6]) == ["the", "Ġ", "o", "the", "r", "Ġthe"]  # the merges, by rank
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.encode("<|endoftext|>") == [eos]

    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no .gguf file"):
        smollm2(folder)


def test_local_executor_defaults_to_the_bfv_backend_and_equals_clear():
    """An in-process worker encrypts unless told otherwise (``bfv``); its float outputs equal ``clear``'s."""
    weights = remote_linear_weights(tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=16))
    encrypted, clear = local_executor(weights), local_executor(weights, "clear")
    assert encrypted.backend.name == "bfv" and encrypted.backend.encrypts
    name = "transformer.h.0.mlp.c_fc"
    x = np.random.default_rng(3).normal(size=(5, 32))
    np.testing.assert_array_equal(encrypted.forward(name, x), clear.forward(name, x))
