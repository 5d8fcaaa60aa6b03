"""An Ollama `Modelfile` next to a GGUF export, so `ollama create NAME -f Modelfile` works in that folder.

Ollama templates are Go templates, not Jinja. A TEMPLATE is written only when the model's chat template is
plain ChatML, checked by rendering sample conversations both ways and comparing the text; any other
template (one that injects a default system prompt, say) gets no TEMPLATE, since recent Ollama versions
read `tokenizer.chat_template` from the GGUF file themselves.
"""

from pathlib import Path

from transformers import PreTrainedTokenizerBase

CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
_SAMPLES = (
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hey."}, {"role": "user", "content": "Bye"}],
)


def write_modelfile(folder: Path, gguf_name: str, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Write `folder/Modelfile` pointing at `./gguf_name`, with a ChatML TEMPLATE when that is exact."""
    lines = [f"FROM ./{gguf_name}", ""]
    if is_chatml(tokenizer):
        lines += [f'TEMPLATE """{CHATML_GO_TEMPLATE}"""', 'PARAMETER stop "<|im_end|>"']
    else:
        lines += ["# No TEMPLATE: this model's chat template is not plain ChatML, so it is not translated by hand.",
                  "# Ollama reads the chat template stored in the GGUF file (tokenizer.chat_template) itself."]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def is_chatml(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template renders exactly as plain ChatML on the sample conversations."""
    if not tokenizer.chat_template:
        return False
    for messages in _SAMPLES:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template may refuse some role orders; then it is not plain ChatML
            return False
        if text != _chatml(messages):
            return False
    return True


def _chatml(messages: list[dict[str, str]]) -> str:
    """What CHATML_GO_TEMPLATE renders for these messages."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"
