"""Masking: exactly the assistant's answers and their end-of-turn token are trained."""

import json

import pytest

from core.data import IGNORE_INDEX, Example, prepare_dataset, render_example
from core.data.render import chat_segments
from tests.tiny_models import CHATML_TEMPLATE, make_sentencepiece_tokenizer, make_tokenizer

# SmolLM2-135M-Instruct's template: it injects its own system prompt when the conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A template without an end-of-turn token: the tokenizer's EOS must be appended to each answer.
BARE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

CONVERSATION = Example(
    7,
    messages=(
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And the capital of France?"},
        {"role": "assistant", "content": "Paris, of course."},
    ),
)


def trained_text(rendered, tokenizer):
    return tokenizer.decode([token for token, label in zip(rendered.input_ids, rendered.labels)
                             if label != IGNORE_INDEX])


def trained_runs(rendered, tokenizer):
    """Decode each maximal run of trained tokens separately."""
    runs, current = [], []
    for token, label in zip(rendered.input_ids, rendered.labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, SMOLLM2_TEMPLATE], ids=["chatml", "smollm2-injected-system"])
def test_only_assistant_answers_and_their_eos_are_trained(template):
    tokenizer = make_tokenizer(template)
    rendered = render_example(CONVERSATION, tokenizer, max_length=512)
    assert trained_runs(rendered, tokenizer) == ["It is 4.<|im_end|>", "Paris, of course.<|im_end|>"]
    # The tokens are the template's own tokens: concatenated they are exactly the rendered conversation.
    assert tokenizer.decode(rendered.input_ids) == tokenizer.apply_chat_template(
        list(CONVERSATION.messages), tokenize=False
    )
    assert rendered.labels == [label if label == IGNORE_INDEX else token
                               for token, label in zip(rendered.input_ids, rendered.labels)]


def test_injected_system_prompt_is_not_trained():
    tokenizer = make_tokenizer(SMOLLM2_TEMPLATE)
    rendered = render_example(CONVERSATION, tokenizer, max_length=512)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(rendered.input_ids)
    assert "SmolLM" not in trained_text(rendered, tokenizer)


def test_template_without_end_token_gets_the_eos_appended():
    tokenizer = make_tokenizer(BARE_TEMPLATE)
    rendered = render_example(CONVERSATION, tokenizer, max_length=512)
    assert trained_runs(rendered, tokenizer) == ["It is 4.<|im_end|>", "Paris, of course.<|im_end|>"]


def test_system_message_in_data_is_not_trained():
    tokenizer = make_tokenizer()
    example = Example(1, messages=({"role": "system", "content": "Be brief."}, *CONVERSATION.messages[:2]))
    assert trained_runs(render_example(example, tokenizer, 512), tokenizer) == ["It is 4.<|im_end|>"]


def test_train_on_all_trains_every_token_but_the_first():
    tokenizer = make_tokenizer()
    rendered = render_example(CONVERSATION, tokenizer, max_length=512, train_on="all")
    assert rendered.labels[0] == IGNORE_INDEX and rendered.labels[1:] == rendered.input_ids[1:]
    assert tokenizer.decode(rendered.input_ids) == tokenizer.apply_chat_template(
        list(CONVERSATION.messages), tokenize=False
    )


def test_plain_text_is_trained_entirely_and_ends_with_eos():
    tokenizer = make_tokenizer()
    rendered = render_example(Example(1, text="The quick brown fox."), tokenizer, max_length=512)
    assert rendered.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(rendered.input_ids) == "The quick brown fox.<|im_end|>"
    assert rendered.labels[1:] == rendered.input_ids[1:]


def test_segments_cover_the_rendering_in_order():
    tokenizer = make_tokenizer(SMOLLM2_TEMPLATE)
    segments = chat_segments(CONVERSATION.messages, tokenizer)
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(
        list(CONVERSATION.messages), tokenize=False
    )
    assert [trained for _, trained in segments] == [False, True, False, True, False]


def test_truncation_is_counted_and_rows_left_without_answers_are_reported(tmp_path):
    tokenizer = make_tokenizer()
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    long_answer = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "fox " * 60}]}
    long_prompt = {"messages": [{"role": "user", "content": "fox " * 60}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [short, long_answer, long_prompt]) + "\n")
    prepared = prepare_dataset(path, tokenizer, max_length=32, skip_invalid=True)
    assert [example.number for example in prepared.examples] == [1, 2]
    assert prepared.truncated_rows == 1 and prepared.examples[1].full_length > 32 == len(prepared.examples[1].input_ids)
    assert prepared.report.invalid_rows == 1
    assert "line 3: no trained tokens left after truncation to 32 tokens" in str(prepared.report.problems[0])


def test_template_that_refuses_a_conversation_is_a_row_problem(tmp_path):
    strict = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == loop.previtem['role'] %}"
              "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    tokenizer = make_tokenizer(strict)
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Yo"}]}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    report = prepare_dataset(path, tokenizer, max_length=64, check=False).report
    assert [(p.number, "chat template refused this conversation: roles must alternate" in p.message)
            for p in report.problems] == [(2, True)]


def test_a_system_prompt_opens_the_first_user_turn_where_the_template_has_no_system_role():
    """Gemma 2's template raises on a system message; the system text then leads the first user message, as
    Gemma 3's own template does, in training and chat alike."""
    tokenizer = make_sentencepiece_tokenizer("gemma")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo"}]
    segments = chat_segments(messages, tokenizer)
    assert "".join(text for text, _ in segments) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n")
    assert [text for text, trained in segments if trained] == ["Yo<end_of_turn>"]


@pytest.mark.slow
def test_masking_with_the_real_default_tokenizer(default_model):
    tokenizer = default_model.tokenizer
    rendered = render_example(CONVERSATION, tokenizer, max_length=512)
    assert trained_runs(rendered, tokenizer) == ["It is 4.<|im_end|>", "Paris, of course.<|im_end|>"]
    assert tokenizer.decode(rendered.input_ids) == tokenizer.apply_chat_template(
        list(CONVERSATION.messages), tokenize=False
    )
    assert "SmolLM" in tokenizer.decode(rendered.input_ids)  # its template injected the default system prompt
