"""Random-initialised Llama-architecture models and token data for benchmarks that need no model hub.

A model folder holds a seeded `LlamaForCausalLM` (config.json + safetensors) and a word-level tokenizer in
which the word "i" is token i, so `load_base_model` reads it like any downloaded model and a text row of n
words is exactly n tokens (the renderer adds the end token), of random ids.
"""

import json
import random
from pathlib import Path

import torch

# Shapes of well-known models of each size (vocab 128256, tied embeddings, grouped-query attention).
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),  # for checking the harness on the CPU
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=4, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),  # Llama 3.2 1B
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256),  # Llama 3.2 3B
}
END_TOKEN = "</s>"


def build_model_folder(size: str, folder: Path, device: str, dtype: torch.dtype, seed: int = 0) -> Path:
    """Write a random `size` model and its tokenizer to `folder` (once; an existing folder is reused)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    shape = SIZES[size]
    config = LlamaConfig(**shape, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=shape["vocab_size"] - 1, pad_token_id=shape["vocab_size"] - 1)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    return folder


def word_tokenizer(vocab_size: int):
    """Words "0" .. "vocab_size - 2" are tokens 0 .. vocab_size - 2; the end token is the last id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(vocab_size - 1)} | {END_TOKEN: vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_TOKEN, pad_token=END_TOKEN)


def write_token_rows(path: Path, rows: int, tokens: int, vocab_size: int, seed: int = 0) -> Path:
    """A JSONL text dataset of `rows` examples of exactly `tokens` random tokens each (end token included)."""
    chooser = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(rows):
            words = " ".join(str(chooser.randrange(vocab_size - 1)) for _ in range(tokens - 1))
            handle.write(json.dumps({"text": words}) + "\n")
    return path
