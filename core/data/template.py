"""Render a conversation through the model's own chat template, system prompt included even where the template
refuses a system turn (Gemma 2 raises "System role not supported"): the system text then opens the first user
turn, as Gemma 3's own template and Google's guidance do."""

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

SYSTEM_JOINER = "\n\n"


def apply_template(tokenizer: PreTrainedTokenizerBase, messages, **options):
    """`tokenizer.apply_chat_template(messages, **options)`, folding a leading system message into the first user
    message when the template refuses it as it stands."""
    messages = list(messages)
    try:
        return tokenizer.apply_chat_template(messages, **options)
    except TemplateError:
        folded = fold_system(messages)
        if folded == messages:
            raise
        return tokenizer.apply_chat_template(folded, **options)


def fold_system(messages: list[dict]) -> list[dict]:
    """The conversation with a leading system message merged into the user message after it (unchanged when there
    is no such pair)."""
    if len(messages) < 2 or messages[0].get("role") != "system" or messages[1].get("role") != "user":
        return messages
    system, user, *rest = messages
    return [{**user, "content": f"{system['content']}{SYSTEM_JOINER}{user['content']}"}, *rest]
