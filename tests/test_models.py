"""Base-model loading: every source and dtype, k-bit quantization, and one clear error per bad input."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.models.errors import ModelSourceError
from core.models.loading import CHATML_TEMPLATE, count_parameters, default_gguf_path, load_base_model
from core.models.quantize import quantize_linears
from tests.tiny_models import make_tiny_llama

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])


def logits(loaded, tokens=TOKENS):
    with torch.no_grad():
        return loaded.model(tokens.to(loaded.model.device)).logits.float()


def file_mapped_tensors(model) -> list[str]:
    """Names of the model's tensors whose memory lies in a file-backed mapping (Linux's /proc/self/maps)."""
    files = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) > 5 and fields[5].startswith("/"):
            files.append(tuple(int(bound, 16) for bound in fields[0].split("-")))
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if any(start <= t.data_ptr() < end for start, end in files)]


def test_cpu_weights_are_copied_out_of_the_file_mapping(tiny_llama_dir):
    """Decoding from weights on a mapped file's pages was ~3% slower; the loader copies them into owned memory."""
    loaded = load_base_model(str(tiny_llama_dir), dtype="fp32", device="cpu")
    assert file_mapped_tensors(loaded.model) == []
    assert file_mapped_tensors(load_base_model(str(tiny_llama_dir), quantization="int8", device="cpu").model) == []
    on_disk = load_file(tiny_llama_dir / "model.safetensors")
    state = loaded.model.state_dict()
    assert on_disk and all(torch.equal(state[name], tensor) for name, tensor in on_disk.items())


@pytest.mark.parametrize("dtype, expected",
                         [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_local_folder_loads_in_each_dtype(tiny_llama_dir, dtype, expected):
    loaded = load_base_model(str(tiny_llama_dir), dtype=dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    reference = sum(p.numel() for p in loaded.model.parameters())
    assert loaded.facts.parameters == reference > 100_000
    assert loaded.facts.weight_bytes == reference * torch.tensor([], dtype=expected).element_size()
    assert loaded.facts.dtype == str(expected).removeprefix("torch.")
    assert loaded.facts.device == "cpu" and loaded.facts.architecture == "LlamaForCausalLM"
    assert not loaded.model.training
    assert loaded.tokenizer.chat_template  # the tiny model ships ChatML
    assert torch.isfinite(logits(loaded)).all()


def test_auto_dtype_is_fp32_on_cpu(tiny_llama_dir):
    assert load_base_model(str(tiny_llama_dir)).facts.dtype == "float32"


# fp32 -> 4 bits is 8x and -> 8 bits 4x, less the scales: nf4 keeps one 8-bit absmax per 64 weights (plus
# the double-quantization scales), int8 one fp32 scale per row, i.e. 4 * 64 / 68 = 3.76x for these 64-wide rows.
@pytest.mark.parametrize("quantization, low, high", [("nf4", 7.5, 8.0), ("int8", 3.75, 4.0)])
def test_kbit_quantization_shrinks_linear_weights(tiny_llama_dir, quantization, low, high):
    full = load_base_model(str(tiny_llama_dir))
    quantized = load_base_model(str(tiny_llama_dir), quantization=quantization)
    ratio = full.facts.linear_weight_bytes / quantized.facts.linear_weight_bytes
    assert low <= ratio <= high, f"{quantization} shrank linear weights by {ratio:.2f}x"
    assert quantized.facts.parameters == full.facts.parameters  # packed weights count their logical shape
    assert quantized.facts.quantization == quantization
    # The quantized model computes nearly the same function.
    a, b = logits(full).flatten(), logits(quantized).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_layers_keep_the_mode_of_the_layers_they_replace(tiny_llama_dir, quantization):
    """bitsandbytes' int8 layer computes differently in training mode, so quantizing a model that is already in
    eval mode (a script's, or a test's) must not leave its new layers training."""
    served = load_base_model(str(tiny_llama_dir), device="cpu").model  # in eval mode
    quantize_linears(served, quantization, compute_dtype=torch.float32, device=torch.device("cpu"))
    reference = load_base_model(str(tiny_llama_dir), quantization=quantization, device="cpu").model  # then eval()
    assert {module.training for module in served.modules()} == {False}
    with torch.no_grad():
        torch.testing.assert_close(served(TOKENS).logits, reference(TOKENS).logits, rtol=0, atol=0)


def test_model_without_chat_template_gets_chatml_and_a_warning(tmp_path):
    folder = make_tiny_llama(tmp_path / "bare", chat_template=None)
    with pytest.warns(UserWarning, match="no chat template"):
        loaded = load_base_model(str(folder))
    assert loaded.tokenizer.chat_template == CHATML_TEMPLATE
    assert any("ChatML" in note for note in loaded.facts.warnings)
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


def test_count_parameters_counts_tied_weights_once(tmp_path):
    folder = make_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    model = load_base_model(str(folder)).model
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(model) == sum(unique.values())
    assert model.lm_head.weight is model.model.embed_tokens.weight


# --- bad input: one clear message each, nothing unpickled ------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist.*'default'"):
        load_base_model(str(tmp_path / "no-such-model"))


def test_pickle_weights_are_refused_and_never_unpickled(tmp_path, tiny_llama_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", folder)
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    with pytest.raises(ModelSourceError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors"):
        load_base_model(str(folder))
    assert not marker.exists()


def test_corrupt_safetensors(tmp_path, tiny_llama_dir):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_llama_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="corrupt or truncated"):
        load_base_model(str(folder))


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ModelSourceError, match="Could not read the GGUF file .*broken.gguf"):
        load_base_model(str(path))
    assert not list((tmp_path / "home" / "models").glob("*")), "a failed conversion left files in the cache"


def test_unknown_architecture(tmp_path):
    folder = tmp_path / "alien"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(ModelSourceError, match="transformers cannot load the model"):
        load_base_model(str(folder))


def test_hub_id_offline_fails_fast_with_a_local_folder_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="not reachable.*local folder path"):
        load_base_model("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_hub_id_unreachable_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelSourceError, match="not reachable"):
        load_base_model("some-org/some-model")


def test_a_plain_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(ModelSourceError, match="not a .gguf file"):
        load_base_model(str(path))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dtype="fp64"), "Unknown dtype 'fp64'"),
        (dict(quantization="nf3"), "Unknown quantization 'nf3'"),
        (dict(device="cuda"), "no CUDA GPU"),
    ],
)
def test_bad_options(tiny_llama_dir, options, message):
    if options.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so device='cuda' is valid")
    with pytest.raises(ModelSourceError, match=message):
        load_base_model(str(tiny_llama_dir), **options)


# --- the real default model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_is_converted_once_then_loaded_from_the_cache(default_model, default_model_home, monkeypatch):
    assert default_model.facts.converted_from_gguf
    assert default_model.facts.name == "SmolLM2-135M-Instruct"
    assert 130e6 < default_model.facts.parameters < 140e6
    cache = default_model_home / "models" / "SmolLM2-135M-Instruct"
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)

    monkeypatch.setenv("LORAFORGE_HOME", str(default_model_home))
    again = load_base_model("default")
    assert not again.facts.converted_from_gguf
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    assert again.tokenizer.chat_template == default_model.tokenizer.chat_template
    assert torch.equal(logits(again), logits(default_model))
    # dense weights, so no quantization marker: transformers' Trainer and PEFT accept the model as it is
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert getattr(again.model, "hf_quantizer", None) is None


@pytest.mark.slow
def test_an_older_cache_loses_its_gguf_quantization_marker(default_model, default_model_home, monkeypatch):
    monkeypatch.setenv("LORAFORGE_HOME", str(default_model_home))
    config_path = default_model_home / "models" / "SmolLM2-135M-Instruct" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "SmolLM2.gguf", "dequantize": False}
    config_path.write_text(json.dumps(config))
    assert getattr(load_base_model(str(config_path.parent)).model, "hf_quantizer", None) is not None  # as it was

    upgraded = load_base_model("default")
    assert "quantization_config" not in json.loads(config_path.read_text())
    assert getattr(upgraded.model, "hf_quantizer", None) is None
    assert torch.equal(logits(upgraded), logits(default_model))


@pytest.mark.slow
def test_a_gguf_file_path_loads_like_the_default(default_model):
    loaded = load_base_model(str(default_gguf_path()))
    assert loaded.facts.converted_from_gguf and loaded.facts.name == "SmolLM2-135M-Instruct.Q4_1"
    assert torch.equal(logits(loaded), logits(default_model))
