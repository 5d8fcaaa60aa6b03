"""Every model family end to end on tiny random models: train with the default preset (fp32 and QLoRA), chat,
merge to a folder plain transformers loads, the adapter and a weighted composition read by PEFT with the same
logits, packed rows that train like padded ones, and GGUF files llama.cpp runs like the live adapter.

Phi-3 computes q, k and v in one fused layer: the presets put the adapter on that layer (`qkv_proj`), as PEFT
does when told that name.
"""

import dataclasses
import json
import math

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.chat.generate import Sampling, conversation, stream_reply
from core.data import BatchSettings, RenderedExample, iterate_batches
from core.data.render import IGNORE_INDEX
from core.data.template import apply_template
from core.export import llamacpp
from core.export.exporter import export_adapters
from core.export.gguf import GgufExportError
from core.export.parity import LLAMA_CPP_TOLERANCES, compare_outputs, model_outputs
from core.lora.model import LoraSettings, add_adapter
from core.lora.peft_format import load_adapter
from core.models.loading import load_base_model
from core.models.packed_attention import use_packed_attention
from core.training.config import TrainConfig
from core.training.data_plan import attends_per_example
from core.training.loop import train
from core.training.loss import trained_token_loss
from tests.export_helpers import live_logits, make_adapter, need_llama_cpp
from tests.job_helpers import tiny_config
from tests.lora_helpers import load, randomize
from tests.tiny_models import FAMILIES, make_tiny_family

peft = pytest.importorskip("peft")

IDS = torch.tensor([[1, 17, 42, 99, 7, 230, 5, 64, 3, 150]])
QV_LAYERS = {"phi3": {"qkv_proj"}}
ARCHITECTURES = {"mistral": "llama"}  # llama.cpp's converter writes Mistral with the llama architecture


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: make_tiny_family(root / family, family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_chats_merges_and_reads_in_peft(family, family_dirs, tmp_path):
    base = family_dirs[family]
    result = train(tiny_config(base, tmp_path, steps=3, name=family), tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.train_loss)
    adapter = tmp_path / "run" / "adapter"
    targets = set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"])
    assert targets == QV_LAYERS.get(family, {"q_proj", "v_proj"})

    ours = load(base)
    load_adapter(ours, adapter)
    with torch.no_grad():
        our_logits = ours(IDS).logits
        theirs = peft.PeftModel.from_pretrained(load(base), adapter).eval()
        torch.testing.assert_close(theirs(IDS).logits, our_logits, rtol=0, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(base)  # chat renders with the family's own template and stops as
    messages = conversation("hi", system="Be brief.")  # its generation config says (Gemma 2: no system role)
    *_, reply = stream_reply(ours, tokenizer, messages, Sampling(max_new_tokens=8, temperature=0))
    prompt = apply_template(tokenizer, messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        answer = ours.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert reply == tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)

    merged = export_adapters([str(adapter)], "merged", tmp_path / "merged", base=str(base))
    assert merged.status == "done" and merged.parity["passed"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, our_logits, rtol=0, atol=1e-4)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template

    other = make_adapter(base, tmp_path / "other", seed=1, targets="qv", std=0.05)
    mix = {adapter: 1.0, other: 0.5}
    composed = export_adapters([str(path) for path in mix], "peft", tmp_path / "mix", weights=list(mix.values()),
                               base=str(base))
    assert composed.status == "done" and composed.parity["passed"]
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(load(base), tmp_path / "mix").eval()
        torch.testing.assert_close(theirs(IDS).logits, live_logits(base, mix, IDS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_preset_finds_its_layers_and_qlora_trains(family, family_dirs, tmp_path):
    base = family_dirs[family]
    for preset in ("qv", "attention", "mlp", "all-linear"):
        report = add_adapter(load(base), preset, LoraSettings(r=2, targets=preset))
        assert report.modules and report.trainable > 0, preset
    config = dataclasses.replace(tiny_config(base, tmp_path, steps=2, name=f"{family}-nf4"), quant="nf4")
    result = train(config, tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.train_loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_exports_to_gguf_that_llama_cpp_runs_as_the_live_adapter(family, family_dirs, tmp_path):
    """f16: both readers (transformers and llama.cpp itself) keep the template, the tokens and the greedy answers
    of the live adapter. q4_k_m, made by llama.cpp's quantizer: llama.cpp runs the file as transformers reads it
    (on random weights 4 bits move the likeliest token too often for the live-adapter rate to mean much; the real
    default model's rate is checked in test_export_llamacpp)."""
    need_llama_cpp()
    base = family_dirs[family]
    adapter = make_adapter(base, tmp_path / "adapter", std=0.05)  # as the Llama GGUF tests do
    f16 = export_adapters([str(adapter)], "gguf", tmp_path / "f16", base=str(base), gguf_type="f16")
    by_reader = {check["reader"]: check for check in f16.parity["checks"]}
    assert f16.status == "done" and set(by_reader) == {"transformers", "llama.cpp"}, f16.parity
    assert all(check["template_same"] and check["greedy_agree"] for check in by_reader.values())
    arch = gguf.GGUFReader(str(tmp_path / "f16" / "f16.f16.gguf")).fields["general.architecture"].contents()
    assert arch == ARCHITECTURES.get(family, family)

    export_adapters([str(adapter)], "gguf", tmp_path / "q4", base=str(base), gguf_type="q4_k_m")
    path = tmp_path / "q4" / "q4.q4_k_m.gguf"
    assert gguf.GGUFReader(str(path)).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    in_transformers = model_outputs(
        AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32), tokenizer)
    in_llama_cpp = llamacpp.outputs(path, in_transformers.rendered, {tokenizer.eos_token_id})
    check = compare_outputs(in_transformers, in_llama_cpp, "q4_k_m", LLAMA_CPP_TOLERANCES["f16"], reader="llama.cpp")
    assert check.passed, check.problems


def test_a_gemma_with_its_own_output_layer_is_refused_for_gguf_with_the_way_out(tmp_path):
    """llama.cpp reads Gemma's output layer from the embeddings: an untied one would be silently dropped."""
    base = make_tiny_family(tmp_path / "gemma", "gemma2", tie_word_embeddings=False)
    adapter = make_adapter(base, tmp_path / "adapter", std=0.05)
    with pytest.raises(GgufExportError, match="an output layer of its own.*convert_hf_to_gguf.py"):
        export_adapters([str(adapter)], "gguf", tmp_path / "gguf", base=str(base))
    assert not (tmp_path / "gguf").exists()


ROPE_SCALINGS = {
    "llama3": ("llama", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64})),
    "linear": ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 8.0})),
    "longrope": ("phi3", dict(max_position_embeddings=2048, original_max_position_embeddings=512,
                              rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                               "long_factor": [1.0 + i for i in range(8)],
                                               "short_factor": [1.0 + 0.5 * i for i in range(8)],
                                               "original_max_position_embeddings": 512})),
}


@pytest.mark.parametrize("scaling", ROPE_SCALINGS)
def test_rope_scaling_reaches_llama_cpp_through_the_gguf(scaling, tmp_path):
    """Llama 3.1's llama3 rope, linear scaling and Phi-3.5's longrope: llama.cpp's answers stay far closer to the
    live adapter than the same weights with plain rope are (a GGUF without the scaling would be that far off)."""
    need_llama_cpp()
    family, settings = ROPE_SCALINGS[scaling]
    scaled = make_tiny_family(tmp_path / "scaled", family, **settings)
    plain = make_tiny_family(tmp_path / "plain", family)  # the same seed, so the same weights
    ids = torch.arange(3, 63).unsqueeze(0)
    with torch.no_grad():
        effect = float((load(scaled)(ids).logits - load(plain)(ids).logits).abs().max())
    adapter = make_adapter(scaled, tmp_path / "adapter", std=0.05)
    result = export_adapters([str(adapter)], "gguf", tmp_path / "gguf", base=str(scaled), gguf_type="f16")
    by_reader = {check["reader"]: check for check in result.parity["checks"]}
    assert result.status == "done", result.parity
    assert by_reader["llama.cpp"]["max_logit_diff"] < effect / 4, (by_reader["llama.cpp"], effect)
    assert "rope scaling" in by_reader["transformers"]["notes"][0]  # its GGUF reader drops it; restored from config


def test_a_rope_scaling_llama_cpp_would_misread_is_refused_for_gguf_with_the_way_out(tmp_path):
    base = make_tiny_family(tmp_path / "qwen", "qwen2", rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64})
    adapter = make_adapter(base, tmp_path / "adapter", std=0.05)
    with pytest.raises(GgufExportError, match="rope scaling 'yarn' on full attention layers.*convert_hf_to_gguf"):
        export_adapters([str(adapter)], "gguf", tmp_path / "gguf", base=str(base))
    assert not (tmp_path / "gguf").exists()


PER_EXAMPLE_ATTENTION = {"gemma2": False, "gemma3": False}  # soft-capping; a window shorter than max length


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_give_a_family_the_loss_and_gradients_of_padded_rows(family, family_dirs):
    """Packing never lets examples see each other: per-example attention where the family's attention is plain
    causal, transformers' own packed-sequence mask where it is not (Gemma's soft-capping, or a sliding window
    shorter than the examples, as the 40-token one here is for Gemma's window of 32)."""
    model = load_base_model(str(family_dirs[family]), "fp32", "none", "cpu").model
    per_example = attends_per_example(TrainConfig(dataset="d.jsonl", max_len=64), model)
    assert per_example == PER_EXAMPLE_ATTENTION.get(family, True)
    if per_example:
        use_packed_attention(model)
    add_adapter(model, "a", LoraSettings(r=4, targets="all-linear"))
    randomize(model, "a")
    model.train()
    generator = torch.Generator().manual_seed(0)
    examples = []
    for number, length in enumerate([9, 14, 5, 40, 11], start=1):
        ids = torch.randint(3, model.config.vocab_size, (length,), generator=generator).tolist()
        examples.append(RenderedExample(number, ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2:], length))
    results = []
    for packing in (True, False):
        batch = next(iterate_batches(examples, BatchSettings(packing=packing, batch_size=5, group_by_length=False),
                                     pad_token_id=0))
        loss, count = trained_token_loss(model, batch.model_inputs())
        (loss / count).backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (packed_loss, packed_grads), (padded_loss, padded_grads) = results
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
