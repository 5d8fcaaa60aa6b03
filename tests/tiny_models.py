"""Tiny random models built at test time: real transformers architectures, a few hundred KB each.

No hub is reachable here, so tests that are about mechanics (loading paths, LoRA math, training steps)
use these instead of downloaded weights. The tokenizer is a real byte-level BPE trained on a few lines.
"""

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "LoRA adds a low-rank update to frozen weights: y = W x + s B A x.",
    "user assistant system: Hello! How can I help you today?",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ' \" ? !",
]


def make_tokenizer(chat_template: str | None = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab about 400) with ChatML special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    """Two layers, hidden 64, grouped-query attention: every Llama code path, in milliseconds."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def make_tiny_llama(folder: Path, seed: int = 0, chat_template: str | None = CHATML_TEMPLATE, **overrides) -> Path:
    """Save a random tiny Llama with its tokenizer as a Hugging Face folder (safetensors)."""
    tokenizer = make_tokenizer(chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), **overrides))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def make_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """Save a random tiny GPT-2 (its linear layers are transformers' Conv1D) with a tokenizer."""
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)


GEMMA_TEMPLATE = (  # Gemma 2's own rules: no system turn, user and model alternate
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# SentencePiece-style vocabularies as the hub's tokenizer.json files hold them: special tokens, the 256 byte
# pieces byte fallback needs, then BPE pieces whose words start with '▁'.
_SPM_STYLES = {
    "gemma": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                  bos="<bos>", eos="<eos>", pad="<pad>", space_prefix=False, template=GEMMA_TEMPLATE),
    "llama": dict(specials=["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                            "<|end|>"],
                  bos="<s>", eos="<|end|>", pad="<|endoftext|>", space_prefix=True, template=PHI3_TEMPLATE),
}


def make_sentencepiece_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE tokenizer with byte fallback (vocab about 600), as Gemma ("gemma": no space
    prefix) and Llama 2 / Phi-3 ("llama": a '▁' before the text) ship theirs, with that family's chat tokens."""
    spec = _SPM_STYLES[style]
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    learner.train_from_iterator(_CORPUS, trainer=trainer)
    learned = learner.get_vocab()
    pieces = spec["specials"] + [f"<0x{byte:02X}>" for byte in range(256)]
    pieces += sorted(learned, key=learned.get)
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
              for merge in json.loads(learner.to_str())["model"]["merges"]]
    spm = Tokenizer(models.BPE({piece: index for index, piece in enumerate(pieces)}, merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    spm.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if spec["space_prefix"] else []) + steps)
    spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if spec["space_prefix"] else []))
    spm.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in spec["specials"]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token=spec["bos"], eos_token=spec["eos"],
                                        pad_token=spec["pad"], unk_token="<unk>")
    tokenizer.chat_template = spec["template"]
    return tokenizer


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# Gemma and Phi-3 ship SentencePiece vocabularies; the others byte-level BPE.
_FAMILY_TOKENIZERS = {"gemma2": "gemma", "gemma3": "gemma", "phi3": "llama"}


def make_tiny_family(folder: Path, family: str, seed: int = 0, **overrides) -> Path:
    """A random tiny model of one family (its own transformers class and config quirks: Qwen's q/k/v biases,
    Qwen3's q/k norms, Gemma's soft-capping, sliding windows and tied embeddings, Phi-3's fused qkv_proj and
    gate_up_proj) with its kind of tokenizer and chat template, saved as a Hugging Face folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    style = _FAMILY_TOKENIZERS.get(family)
    tokenizer = make_sentencepiece_tokenizer(style) if style else make_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    quirks = {
        "mistral": dict(sliding_window=None),
        "qwen3": dict(head_dim=128),  # every Qwen3 has 128, and transformers' GGUF reader assumes it
        "gemma2": dict(head_dim=256, sliding_window=32, query_pre_attn_scalar=256, tie_word_embeddings=True),
        "gemma3_text": dict(head_dim=256, sliding_window=32, query_pre_attn_scalar=256, tie_word_embeddings=True),
    }
    model_type = "gemma3_text" if family == "gemma3" else family
    config = AutoConfig.for_model(model_type, **{**shape, **quirks.get(model_type, {}), **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if style == "gemma":  # as Gemma ships: <eos> ends a text, <end_of_turn> a reply
        turn_end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, turn_end]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def write_tiny_gguf(model_folder: Path, path: Path, gguf_type: str = "f16") -> Path:
    """The Hugging Face folder `model_folder` (a Llama, Qwen2 or Qwen3) written as a GGUF file at `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.export.gguf import write_gguf

    model = AutoModelForCausalLM.from_pretrained(model_folder)
    return write_gguf(model, AutoTokenizer.from_pretrained(model_folder), path, gguf_type, name=Path(path).stem)
