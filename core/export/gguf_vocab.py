"""A Hugging Face tokenizer as the `tokenizer.ggml.*` metadata llama.cpp reads, in both kinds models ship:

    byte-level BPE ("gpt2")     SmolLM2, Llama 3, Qwen, Phi-4: tokens, types and merges, plus llama.cpp's name
                                for the split pattern (`tokenizer.ggml.pre`)
    SentencePiece BPE ("llama") Gemma, Llama 2, Mistral v0.1, Phi-3: pieces with '▁' for spaces and <0xXX> byte
                                pieces for byte fallback, and a score per piece that orders the merges

Both are read from the tokenizer's own tokenizer.json (no `sentencepiece` package needed). A SentencePiece
vocabulary's scores are its merge order: llama.cpp joins the adjacent pair whose joined piece scores highest, so
the piece made by merge number r scores -r and llama.cpp merges in the order the tokenizer does.
"""

import json
import re

import gguf
from transformers import PreTrainedTokenizerBase

from core.export.gguf_families import GgufExportError

# llama.cpp's names for byte-level BPE split patterns (`tokenizer.ggml.pre`), keyed by the pattern itself.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    _CONTRACTIONS + r"\p{N}{1,3}" + _REST: "llama-bpe",  # Llama 3: digits in threes
    _CONTRACTIONS + r"\p{N}" + _REST: "qwen2",  # Qwen 2 and 3: one digit at a time
}
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
_SPACE = "\u2581"


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int,
                  pre_tokenizer: str = "default", end_ids: tuple[int, ...] = ()) -> None:
    """Write the tokenizer's vocabulary, special ids and chat template. `pre_tokenizer` names the byte-level split
    pattern when PRE_TOKENIZERS does not know the tokenizer's own (the base GGUF's value, when it came from one);
    `end_ids` are the ids that end a reply (the generation config's eos ids: Gemma's <end_of_turn> beside <eos>)."""
    spec = _spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        _add_byte_level(writer, spec, vocab_size, _split_pattern_name(spec) or pre_tokenizer)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        _add_sentencepiece(writer, spec, vocab_size)
    else:
        raise GgufExportError(
            "GGUF export writes byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen) and SentencePiece BPE ones with "
            f"byte fallback (Gemma, Llama 2, Phi-3); this model's tokenizer is "
            f"{model.get('type') or type(tokenizer).__name__}. Export a merged Hugging Face folder instead and "
            "convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    _add_specials(writer, tokenizer, end_ids)


def _spec(tokenizer: PreTrainedTokenizerBase) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def _pieces(spec: dict, vocab_size: int, kind):
    """(id, text, type) for every embedding row: `kind(id, text)` types the tokenizer's own pieces; added tokens are
    control tokens (special) or user-defined ones; rows no token uses (padding to a round size) are unused."""
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    by_id = {index: token for token, index in spec["model"]["vocab"].items()}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    for index in range(vocab_size):
        if index not in by_id:
            yield index, f"[PAD{index}]", gguf.TokenType.UNUSED
        elif index in added:
            special = added[index]["special"]
            yield index, by_id[index], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        else:
            yield index, by_id[index], kind(index, by_id[index])


def _merge_pairs(spec: dict) -> list[tuple[str, str]]:
    return [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)
            for merge in spec["model"].get("merges", [])]


def _add_byte_level(writer: gguf.GGUFWriter, spec: dict, vocab_size: int, pre: str) -> None:
    rows = list(_pieces(spec, vocab_size, lambda index, text: gguf.TokenType.NORMAL))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([text for _, text, _ in rows])
    writer.add_token_types([kind for *_, kind in rows])
    writer.add_token_merges([" ".join(pair) for pair in _merge_pairs(spec)])


def _add_sentencepiece(writer: gguf.GGUFWriter, spec: dict, vocab_size: int) -> None:
    unknown = spec["model"].get("unk_token")

    def kind(index: int, text: str) -> gguf.TokenType:
        if text == unknown:
            return gguf.TokenType.UNKNOWN
        return gguf.TokenType.BYTE if _BYTE_PIECE.fullmatch(text) else gguf.TokenType.NORMAL

    rows = list(_pieces(spec, vocab_size, kind))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([text for _, text, _ in rows])
    writer.add_token_scores(_merge_scores(spec, rows))
    writer.add_token_types([kind for *_, kind in rows])
    writer.add_add_space_prefix(_adds_space_prefix(spec))


def _merge_scores(spec: dict, rows: list) -> list[float]:
    """-r for the piece merge number r makes; 0 for single characters, bytes and special pieces (never joined);
    below every merge for a longer piece no merge makes, so llama.cpp joins it last as the tokenizer never does."""
    pairs = _merge_pairs(spec)
    rank: dict[str, int] = {}
    for number, (left, right) in enumerate(pairs):
        rank.setdefault(left + right, number)
    unmade = -float(len(pairs) + 1)
    return [-float(rank[text]) if text in rank else 0.0 if len(text) == 1 or piece != gguf.TokenType.NORMAL
            else unmade for _, text, piece in rows]


def _adds_space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts '▁' before the text (Llama 2, Phi-3) or not (Gemma)."""
    steps = spec.get("normalizer") or {}
    for step in steps.get("normalizers", [steps]):
        if step.get("type") == "Prepend" and step.get("prepend") == _SPACE:
            return True
    split = spec.get("pre_tokenizer") or {}
    for step in split.get("pretokenizers", [split]):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never"
    return False


def _add_specials(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, end_ids: tuple[int, ...]) -> None:
    """Special ids; an end-of-turn id other than eos becomes llama.cpp's `eot`, so Ollama stops there too."""
    turn_end = next((token for token in end_ids if token != tokenizer.eos_token_id), None)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "eot": turn_end,
               "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    for kind, token_id in special.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _split_pattern_name(spec: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for the tokenizer's split regex, when PRE_TOKENIZERS knows it."""
    steps = spec.get("pre_tokenizer") or {}
    for step in steps.get("pretokenizers", [steps]):
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
    return None
