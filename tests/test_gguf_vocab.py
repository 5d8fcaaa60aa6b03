"""The GGUF tokenizer metadata as llama.cpp reads it: byte-level BPE and both SentencePiece styles (Gemma: no space
prefix; Llama 2 / Phi-3: a '▁' before the text) tokenize awkward text exactly as the Hugging Face tokenizer does."""

import gguf
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.export.gguf import write_gguf
from tests.export_helpers import need_llama_cpp
from tests.tiny_models import make_tiny_family

# what ends a reply in llama.cpp (and so in Ollama): eos, and Gemma's <end_of_turn> beside its <eos>
END_OF_TURN = {"llama": ["<|im_end|>"], "gemma2": ["<eos>", "<end_of_turn>"], "phi3": ["<|end|>"]}
TEXTS = ("Hello world", "  two  spaces and\ttabs\n\nnewlines", "ünïcödé — 東京 🦙", "The capital of France is Paris.",
         "<start_of_turn>user\nHi<end_of_turn>\n", "<|user|>\nWhat?<|end|>\n<|assistant|>\n", " leading space", "x")


@pytest.mark.parametrize("family, model", [("llama", "gpt2"), ("gemma2", "llama"), ("phi3", "llama")])
def test_llama_cpp_tokenizes_the_gguf_vocabulary_as_the_tokenizer_does(family, model, tmp_path):
    need_llama_cpp()
    import llama_cpp

    base = make_tiny_family(tmp_path / family, family)
    tokenizer = AutoTokenizer.from_pretrained(base)
    path = write_gguf(AutoModelForCausalLM.from_pretrained(base), tokenizer, tmp_path / "m.gguf")
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == model
    reader = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert reader.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        vocab = llama_cpp.llama_model_get_vocab(reader.model)
        ends = {token for token in range(len(tokenizer)) if llama_cpp.llama_vocab_is_eog(vocab, token)}
        assert {tokenizer.convert_tokens_to_ids(name) for name in END_OF_TURN[family]} <= ends
    finally:
        reader.close()
    if model == "llama":  # byte pieces for byte fallback, merge order as scores, the family's space prefix
        types = fields["tokenizer.ggml.token_type"].contents()
        assert types.count(gguf.TokenType.BYTE) == 256
        assert fields["tokenizer.ggml.add_space_prefix"].contents() == (family == "phi3")


def test_a_reply_end_llama_cpp_does_not_know_by_name_is_written_as_its_end_of_turn(tmp_path):
    """The generation config's second eos id becomes `tokenizer.ggml.eot_token_id`, so llama.cpp and Ollama stop
    there even when its text is none of the end-of-turn names llama.cpp recognises (here <|im_start|>)."""
    need_llama_cpp()
    import llama_cpp

    base = make_tiny_family(tmp_path / "llama", "llama")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    custom = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, custom]
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.eot_token_id"].contents() == custom
    reader = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        assert llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(reader.model), custom)
    finally:
        reader.close()
