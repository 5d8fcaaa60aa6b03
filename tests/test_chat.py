"""Chatting with base models, from core and from the command line, as a person would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.chat.generate import GenerationSettingsError, Message, Sampling, conversation, stream_reply
from core.models.loading import load_base_model

REPO = Path(__file__).resolve().parents[1]
CAPITAL_QUESTION = "What is the capital of France?"


def run_cli(*args: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORAFORGE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def generate_reply(model, tokenizer, messages: list[Message], sampling: Sampling | None = None) -> str:
    """The whole reply at once: the last text the stream yields."""
    text = ""
    for text in stream_reply(model, tokenizer, messages, sampling):
        pass
    return text.strip()



def test_conversation_orders_system_history_and_prompt():
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert conversation("c", history, system="s") == [
        {"role": "system", "content": "s"},
        *history,
        {"role": "user", "content": "c"},
    ]


def test_streamed_reply_grows_and_greedy_is_repeatable(tiny_llama_dir):
    loaded = load_base_model(str(tiny_llama_dir))
    messages = conversation("hello")
    pieces = list(stream_reply(loaded.model, loaded.tokenizer, messages, Sampling(max_new_tokens=12, temperature=0)))
    assert len(pieces) >= 2
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:]))
    assert generate_reply(loaded.model, loaded.tokenizer, messages,
                          Sampling(max_new_tokens=12, temperature=0)) == pieces[-1].strip()


def test_seeded_sampling_is_repeatable(tiny_llama_dir):
    loaded = load_base_model(str(tiny_llama_dir))
    settings = dict(max_new_tokens=16, temperature=1.0, top_p=1.0)
    first = generate_reply(loaded.model, loaded.tokenizer, conversation("hi"), Sampling(**settings, seed=3))
    assert first == generate_reply(loaded.model, loaded.tokenizer, conversation("hi"), Sampling(**settings, seed=3))


@pytest.mark.parametrize(
    "settings, message",
    [(dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p")],
)
def test_bad_sampling_settings(tiny_llama_dir, settings, message):
    loaded = load_base_model(str(tiny_llama_dir))
    with pytest.raises(GenerationSettingsError, match=message):
        generate_reply(loaded.model, loaded.tokenizer, conversation("hi"), Sampling(**settings))


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france(default_model):
    reply = generate_reply(default_model.model, default_model.tokenizer, conversation(CAPITAL_QUESTION),
                           Sampling(max_new_tokens=40, temperature=0))
    assert "Paris" in reply


@pytest.mark.slow
def test_cli_chat_answers_from_the_default_model(default_model, default_model_home):
    result = run_cli("chat", "--prompt", CAPITAL_QUESTION, "--temperature", "0", home=default_model_home)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "--model", "/no/such/folder", "--prompt", "hi"], "Model path /no/such/folder does not exist"),
        (["chat", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens is 0"),
        (["chat", "--prompt", "  "], "--prompt is empty"),
        (["serve", "--host", "0.0.0.0"], "Add --auth user:password"),
        (["serve", "--host", "127.0.0.1", "--auth", "nopassword"], "--auth must look like user:password"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    result = run_cli(*args, home=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
