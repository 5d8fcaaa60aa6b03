"""Our LoRA core against PEFT (a test-only oracle): same logits with non-zero adapters, files readable both ways."""

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from app.cli import main  # noqa: E402
from core.lora.compose import combine_adapters  # noqa: E402
from core.lora.model import LoraSettings, add_adapter, merge, set_active, unload  # noqa: E402
from core.lora.peft_format import load_adapter, save_adapter  # noqa: E402
from core.models.quantize import quantize_linears  # noqa: E402
from tests.lora_helpers import load, logits, randomize  # noqa: E402

PARITY = 1e-5
CASES = {
    "linear-llama": ("tiny_llama_dir", dict(r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])),
    "conv1d-gpt2": ("tiny_gpt2_dir", dict(r=4, alpha=8, targets=["c_attn", "attn.c_proj", "c_fc"])),
    "rslora": ("tiny_llama_dir", dict(r=8, alpha=4, targets="attention", use_rslora=True)),
    "dora-llama": ("tiny_llama_dir", dict(r=4, alpha=8, targets="all-linear", use_dora=True)),
    "dora-gpt2": ("tiny_gpt2_dir", dict(r=2, alpha=4, targets=["c_attn", "c_fc"], use_dora=True)),
}


def peft_config(settings: dict, **extra) -> LoraConfig:
    targets = settings["targets"]
    targets = (
        {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "all-linear": "all-linear"}.get(targets, targets)
        if isinstance(targets, str) else targets
    )
    return LoraConfig(
        r=settings["r"], lora_alpha=settings["alpha"], target_modules=targets, task_type="CAUSAL_LM",
        use_rslora=settings.get("use_rslora", False), use_dora=settings.get("use_dora", False), **extra,
    )


@pytest.mark.parametrize("case", CASES)
def test_our_saved_adapter_gives_equal_logits_in_peft(case, request, tmp_path):
    folder = request.getfixturevalue(CASES[case][0])
    settings = CASES[case][1]
    ours = load(folder)
    base_logits = logits(ours)
    add_adapter(ours, "default", LoraSettings(**settings))
    randomize(ours, "default")
    our_logits = logits(ours)
    save_adapter(ours, "default", tmp_path / "adapter")

    theirs = PeftModel.from_pretrained(load(folder), tmp_path / "adapter").eval()
    peft_logits = logits(theirs)

    assert (our_logits - base_logits).abs().max() > 1e-2  # the adapter really changes the output
    assert (our_logits - peft_logits).abs().max() < PARITY


@pytest.mark.parametrize("case", CASES)
def test_peft_saved_adapter_gives_equal_logits_in_ours(case, request, tmp_path):
    folder = request.getfixturevalue(CASES[case][0])
    settings = CASES[case][1]
    torch.manual_seed(1)
    theirs = get_peft_model(load(folder), peft_config(settings, init_lora_weights=False)).eval()
    with torch.no_grad():  # move DoRA magnitudes off their init so they matter
        for name, param in theirs.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand_like(param))
    peft_logits = logits(theirs)
    theirs.save_pretrained(tmp_path / "adapter")

    ours = load(folder)
    report = load_adapter(ours, tmp_path / "adapter")

    assert len(report.modules) == sum(1 for n, _ in theirs.named_modules() if n.endswith(".lora_A"))
    assert (logits(ours) - peft_logits).abs().max() < PARITY


def test_exact_composition_equals_peft_cat(tiny_llama_dir, tmp_path):
    torch.manual_seed(2)
    theirs = get_peft_model(load(tiny_llama_dir), peft_config(CASES["linear-llama"][1], init_lora_weights=False))
    theirs.add_adapter("b", peft_config(dict(r=2, alpha=6, targets=["q_proj", "v_proj"]), init_lora_weights=False))
    theirs.save_pretrained(tmp_path)  # default -> tmp_path, b -> tmp_path/b
    theirs.add_weighted_adapter(["default", "b"], [0.7, -0.4], "mix", combination_type="cat")
    theirs.set_adapter("mix")
    peft_logits = logits(theirs.eval())

    ours = load(tiny_llama_dir)
    load_adapter(ours, tmp_path, "default")
    load_adapter(ours, tmp_path / "b", "b")
    report = combine_adapters(ours, {"default": 0.7, "b": -0.4}, "mix")
    set_active(ours, "mix")

    assert report.ranks["model.layers.0.self_attn.q_proj"] == 4 + 2
    assert report.ranks["model.layers.0.mlp.down_proj"] == 4
    assert report.max_relative_error == 0.0
    assert (logits(ours) - peft_logits).abs().max() < PARITY


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_kbit_merge_stays_within_peft_tolerance(tiny_llama_dir, tmp_path, quantization):
    source = load(tiny_llama_dir)
    add_adapter(source, "default", LoraSettings(r=4, alpha=8, targets="attention"))
    randomize(source, "default", std=0.3)
    save_adapter(source, "default", tmp_path)

    def kbit_model():
        model = load(tiny_llama_dir)
        quantize_linears(model, quantization, compute_dtype=torch.float32, device=torch.device("cpu"))
        return model

    def ours():
        model = kbit_model()
        load_adapter(model, tmp_path)
        return model

    def theirs():
        model = kbit_model()
        # PEFT picks its bitsandbytes LoRA layer only when the model says so
        setattr(model, "is_loaded_in_4bit" if quantization == "nf4" else "is_loaded_in_8bit", True)
        return PeftModel.from_pretrained(model, tmp_path).eval()

    # Merged before any forward: on a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first
    # inference (absmax in bf16), and PEFT's merge then dequantizes the repacked copy; ours undoes the repacking.
    ours_merged_model, peft_merged_model = ours(), theirs()
    merge(ours_merged_model)
    with pytest.warns(UserWarning):
        peft_merged_model.merge_adapter()
    ours_merged, peft_merged = logits(ours_merged_model), logits(peft_merged_model)
    ours_unmerged, peft_unmerged = logits(ours()), logits(theirs())

    peft_merge_shift = (peft_merged - peft_unmerged).abs().max().item()
    assert (ours_unmerged - peft_unmerged).abs().max() < PARITY
    assert 0 < peft_merge_shift  # requantization really moves the outputs...
    assert (ours_merged - ours_unmerged).abs().max() <= 1.01 * peft_merge_shift  # ...and ours no more than PEFT's
    assert (ours_merged - peft_merged).abs().max() < PARITY  # same dequantize-add-requantize result


@pytest.mark.slow
def test_default_model_adapter_gives_same_greedy_text_in_peft(default_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = default_model.model, default_model.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours."}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    greedy = dict(max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    try:
        with torch.no_grad():
            base_ids = model.generate(**prompt, **greedy)
        add_adapter(model, "parity", LoraSettings(r=8, alpha=16, targets="qv"))
        randomize(model, "parity", seed=3, std=0.03)
        with torch.no_grad():
            our_ids = model.generate(**prompt, **greedy)
        save_adapter(model, "parity", tmp_path, base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    finally:
        unload(model)  # the session model goes back to the plain base for other tests

    fresh = AutoModelForCausalLM.from_pretrained(default_model.facts.folder, dtype=torch.float32).eval()
    theirs = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        peft_ids = theirs.generate(**prompt, **greedy)

    our_text = tokenizer.decode(our_ids[0], skip_special_tokens=True)
    assert not torch.equal(our_ids, base_ids)  # the adapter changes what the model says
    assert our_text == tokenizer.decode(peft_ids[0], skip_special_tokens=True)
    assert torch.equal(our_ids, peft_ids)


def test_an_adapter_made_on_a_base_in_another_folder_loads_and_answers_as_in_peft(tiny_llama_dir, tmp_path):
    """A name is not an identity: PEFT records the base's folder as it was on the trainer's machine
    (`my-models/llama3`); the same weights in a folder of another name take the adapter, as PEFT and vLLM do."""
    import shutil

    trained_on = tmp_path / "my-models" / "llama3"
    shutil.copytree(tiny_llama_dir, trained_on)
    torch.manual_seed(3)
    theirs = get_peft_model(load(trained_on), peft_config(CASES["linear-llama"][1], init_lora_weights=False)).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    assert str(trained_on) in (tmp_path / "adapter" / "adapter_config.json").read_text()
    prompt = torch.tensor([[1, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)

    ours = load(tiny_llama_dir)  # the same weights, a folder of another name
    load_adapter(ours, tmp_path / "adapter")
    with torch.no_grad():
        answer = ours.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        plain = load(tiny_llama_dir).generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert answer.tolist() == expected.tolist() and answer.tolist() != plain.tolist()


def test_an_adapter_on_a_base_of_another_fingerprint_loads_with_a_warning_naming_both(tiny_llama_dir, tmp_path,
                                                                                      capsys):
    """Shapes decide; where the adapter records its base's fingerprint (ours do, in safetensors metadata that
    PEFT ignores) another architecture with the same shapes loads with a warning. PEFT's files record none."""
    from tests.tiny_models import make_tiny_llama

    model = load(tiny_llama_dir)
    add_adapter(model, "a", LoraSettings(r=2))
    save_adapter(model, "a", tmp_path / "ours")
    assert load_adapter(load(tiny_llama_dir), tmp_path / "ours").warning is None
    assert PeftModel.from_pretrained(load(tiny_llama_dir), tmp_path / "ours") is not None

    other = make_tiny_llama(tmp_path / "other-rope", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    warning = load_adapter(load(other), tmp_path / "ours").warning
    assert warning and "made on another base (llama, 2 layers, hidden 64" in warning and "is loaded" in warning

    theirs = get_peft_model(load(tiny_llama_dir), peft_config(CASES["linear-llama"][1]))
    theirs.save_pretrained(tmp_path / "peft")
    assert load_adapter(load(other), tmp_path / "peft").warning is None

    assert main(["chat", "--model", str(other), "--adapter", str(tmp_path / "ours"), "--prompt", "hi",
                 "--max-new-tokens", "2", "--temperature", "0"]) == 0
    assert "WARNING: The adapter in" in capsys.readouterr().err
