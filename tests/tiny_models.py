"""Tiny random models built at test time: real transformers architectures, a few hundred KB each.

No hub is reachable here, so tests that are about mechanics (loading paths, LoRA math, training steps)
use these instead of downloaded weights. The tokenizer is a real byte-level BPE trained on a few lines.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def make_tiny_family(folder: Path, family: str, seed: int = 0) -> Path:
    """A random tiny model of one family (its own transformers class and config quirks: Qwen's q/k/v biases,
    Qwen3's q/k norms, Gemma's soft-capping and sliding windows, Phi-3's fused qkv_proj and gate_up_proj) with
    the byte-level BPE tokenizer, saved as a Hugging Face folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = make_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    quirks = {
        "mistral": dict(sliding_window=None),
        "qwen3": dict(head_dim=128),  # every Qwen3 has 128, and transformers' GGUF reader assumes it
        "gemma2": dict(head_dim=16, sliding_window=32, query_pre_attn_scalar=16),
        "gemma3_text": dict(head_dim=16, sliding_window=32, query_pre_attn_scalar=16),
    }
    model_type = "gemma3_text" if family == "gemma3" else family
    config = AutoConfig.for_model(model_type, **shape, **quirks.get(model_type, {}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)
