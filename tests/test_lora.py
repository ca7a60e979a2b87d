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
    tiny_gpt2,
    tiny_llama,
    unwrap_peft,
)

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
    code = "import sys, veilml, veilml.models.lora as l; print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
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


@pytest.mark.parametrize("build", [lambda: tiny_gpt2(**TINY), lambda: tiny_llama(hidden_size=32, max_position_embeddings=SEQ)], ids=["conv1d", "linear"])
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
    cosines = {}
    for name, p_float in reference.named_parameters():
        if p_float.requires_grad:
            cosine = torch.nn.functional.cosine_similarity(p_float.grad.flatten(), remote_grads.pop(name).flatten(), dim=0)
            cosines[name] = cosine.item()
    assert not remote_grads
    worst = min(cosines, key=cosines.get)
    print(f"\n{len(cosines)} LoRA tensors; cosine min {cosines[worst]:.5f} ({worst}), mean {np.mean(list(cosines.values())):.5f}; "
          f"loss float {losses[0]:.5f} clear {losses[1]:.5f}")
    assert len(cosines) == 16 and all(".lora_" in name for name in cosines)
    assert cosines[worst] >= 0.99, f"{worst}: cosine {cosines[worst]}"
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


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
    assert abs(clear_loss - float_loss) <= 0.03 * float_loss


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
    assert straight.state.log_history == resumed.state.log_history
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
    losses = {}
    for mode in ("float", "clear"):
        model = tiny_llama(hidden_size=32, max_position_embeddings=SEQ)
        executor = None if mode == "float" else local_executor(remote_linear_weights(model), "clear")
        trainer = LoraTrainer(model, executor=executor, max_steps=3, learning_rate=1e-2, progress=False)
        losses[mode] = trainer.train(train).training_loss
        if executor is not None:
            assert len(trainer.remote_layers) == 2 * 7
            assert isinstance(unwrap_peft(trainer.model).get_submodule("model.layers.0.self_attn.q_proj").base_layer, RemoteLinear)
    assert losses["clear"] == pytest.approx(losses["float"], rel=0.01)
