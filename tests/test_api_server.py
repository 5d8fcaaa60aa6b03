"""The OpenAI-compatible API, driven by the real `openai` client against a real `launch.py api` process.

A tiny random Llama with two registered adapters (random, non-zero, so each answers differently) serves every
test of the module; the oracles are `launch.py chat` (greedy) and `model.generate` under the same adapters.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from core.chat.generate import Sampling, conversation, stream_reply
from core.jobs.adapters import register_adapter
from core.jobs.runs import delete_run
from core.lora.model import LoraSettings, active_adapters, add_adapter
from core.lora.peft_format import load_adapter, save_adapter
from core.serve.key_guard import MAX_FAILURES
from core.store.database import Store
from tests.browser import REPO, served_app
from tests.lora_helpers import load, randomize

PROMPT = "What is the capital of France?"


def make_adapter(model_dir, folder, seed: int, targets: str = "all-linear"):
    model = load(model_dir)
    add_adapter(model, "a", LoraSettings(r=4, alpha=8, targets=targets))
    randomize(model, "a", seed=seed, std=0.3)
    return save_adapter(model, "a", folder, base_model_name=str(model_dir))


@pytest.fixture(scope="module")
def api_home(tmp_path_factory, tiny_llama_dir):
    """A LORAFORGE_HOME with adapters 'pirate' and 'dates' registered."""
    home = tmp_path_factory.mktemp("api") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(home))
        with Store() as store:
            for name, seed in (("pirate", 1), ("dates", 2)):
                folder = make_adapter(tiny_llama_dir, home.parent / name, seed)
                register_adapter(store, folder, source="imported", name=name)
    return home


@pytest.fixture(scope="module")
def api(api_home, tiny_llama_dir):
    """(base URL, client) of a running `launch.py api` on the tiny Llama."""
    with served_app(api_home, "--model", str(tiny_llama_dir), verb="api", ready_path="v1/models") as url:
        yield url, openai.OpenAI(base_url=f"{url}v1", api_key="unused", max_retries=0)


@pytest.fixture
def in_api_home(api_home, monkeypatch):
    monkeypatch.setenv("LORAFORGE_HOME", str(api_home))
    return api_home


def greedy(client, model: str, prompt: str = PROMPT, tokens: int = 24, **options) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=tokens, **options)
    return reply.choices[0].message.content


def cli_answer(model_dir, adapter: str | None, home, tokens: int = 24) -> str:
    command = [sys.executable, "launch.py", "chat", "--model", str(model_dir), "--prompt", PROMPT, "--temperature",
               "0", "--max-new-tokens", str(tokens)] + (["--adapter", adapter] if adapter else [])
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "LORAFORGE_HOME": str(home)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.removesuffix("\n")


def test_models_lists_the_base_and_every_adapter(api):
    _, client = api
    names = [model.id for model in client.models.list()]
    assert names[0] == "base" and {"pirate", "dates"} <= set(names)


def test_greedy_answers_equal_the_cli_for_the_base_and_each_adapter(api, api_home, tiny_llama_dir):
    _, client = api
    answers = {model: greedy(client, model) for model in ("base", "pirate", "dates")}
    assert len(set(answers.values())) == 3  # each adapter really changes the answer
    for model, answer in answers.items():
        assert answer == cli_answer(tiny_llama_dir, None if model == "base" else model, api_home), model


def test_streaming_gives_the_same_text_in_pieces_with_usage(api):
    _, client = api
    whole = client.chat.completions.create(model="pirate", messages=[{"role": "user", "content": PROMPT}],
                                           temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model="pirate", messages=[{"role": "user", "content": PROMPT}],
                                                 temperature=0, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    assert sum(1 for piece in pieces if piece) > 2  # really streamed, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.prompt_tokens > 5 and whole.usage.total_tokens == (whole.usage.prompt_tokens +
                                                                          whole.usage.completion_tokens)


def test_a_weighted_set_answers_as_the_same_gains_in_the_model(api, in_api_home, tiny_llama_dir):
    _, client = api
    answer = greedy(client, "pirate:0.7, dates:0.5")
    model = load(tiny_llama_dir)
    with Store() as store:
        rows = {row["name"]: row for row in store.adapters()}
    for name in ("pirate", "dates"):
        load_adapter(model, rows[name]["path"], name=name, activate=False)
    with active_adapters(model, {"pirate": 0.7, "dates": 0.5}):
        *_, expected = stream_reply(model, AutoTokenizer.from_pretrained(tiny_llama_dir), conversation(PROMPT),
                                    Sampling(max_new_tokens=24, temperature=0))
    assert answer == expected
    assert answer not in (greedy(client, "pirate"), greedy(client, "dates"))


def test_concurrent_requests_for_different_adapters_match_their_lone_answers(api):
    _, client = api
    models = ["base", "pirate", "dates", "pirate:0.5", "dates", "base", "pirate", "dates:2"]
    prompts = [f"{PROMPT} {i}" for i in range(len(models))]
    alone = [greedy(client, model, prompt) for model, prompt in zip(models, prompts)]
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda pair: greedy(client, *pair), zip(models, prompts)))
    assert together == alone


def test_seeded_sampling_repeats_and_stop_strings_cut(api):
    _, client = api
    first, second = (client.chat.completions.create(model="dates", messages=[{"role": "user", "content": PROMPT}],
                                                    temperature=1.0, top_p=0.9, seed=11, max_tokens=16)
                     for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    full = greedy(client, "pirate", tokens=24)
    stop = full[5:8]
    cut = greedy(client, "pirate", tokens=24, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_errors_come_in_openai_shape(api):
    url, client = api
    with pytest.raises(openai.NotFoundError) as unknown:
        greedy(client, "no-such-adapter")
    assert unknown.value.code == "model_not_found" and "pirate" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as negative:
        greedy(client, "base", tokens=-3)
    assert negative.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as too_long:
        greedy(client, "base", prompt="word " * 400, tokens=8)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="base", messages=[])
    assert empty.value.param == "messages"
    status, body = raw_post(url + "v1/chat/completions", b'{"model": "base", "messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"] and body["error"]["type"]
    with pytest.raises(openai.BadRequestError) as seed:
        greedy(client, "base", seed=2**70)
    assert seed.value.param == "seed"
    for field, value in (("logit_bias", {"5": 10}), ("tools", [{"type": "function", "function": {"name": "f"}}]),
                         ("response_format", {"type": "json_object"})):
        with pytest.raises(openai.BadRequestError) as unsupported:  # ignoring it would change the answer unsaid
            greedy(client, "base", **{field: value})
        assert unsupported.value.param == field and "not supported" in unsupported.value.message
    assert greedy(client, "base", response_format={"type": "text"}, logit_bias={})  # what changes nothing passes
    huge = b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 400 + b"}"
    status, body = raw_post(url + "v1/chat/completions", huge)
    assert status == 400 and body["error"]["param"] == "max_tokens"
    as_developer, as_system = (client.chat.completions.create(
        model="base", messages=[{"role": role, "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=temperature, max_tokens=6) for role, temperature in (("developer", 1e-40), ("system", 0)))
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content  # greedy, as system


def test_a_newly_registered_adapter_is_served_and_a_deleted_one_refused(api, in_api_home, tiny_llama_dir):
    _, client = api
    with Store() as store:  # a finished run with its adapter in its folder, as training leaves them
        run_id = store.create_run("fresh", {}, str(tiny_llama_dir), None, None, status="running")
        store.set_status(run_id, "completed")
        folder = make_adapter(tiny_llama_dir, Path(store.get_run(run_id)["run_dir"]) / "adapter", seed=5,
                              targets="qv")
        register_adapter(store, folder, run_id=run_id)
    assert "fresh" in [model.id for model in client.models.list()]
    assert greedy(client, "fresh") not in (greedy(client, "base"), greedy(client, "pirate"))
    with Store() as store:
        delete_run(store, run_id)
    assert "fresh" not in [model.id for model in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        greedy(client, "fresh")


def test_plain_completions_continue_the_prompt(api):
    _, client = api
    reply = client.completions.create(model="pirate", prompt="The quick brown", max_tokens=10, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 10 and reply.choices[0].text


def test_another_interface_needs_a_key(tmp_path, tiny_llama_dir):
    refused = subprocess.run([sys.executable, "launch.py", "api", "--host", "0.0.0.0", "--model",
                              str(tiny_llama_dir)], cwd=REPO, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "LORAFORGE_API_KEY"})
    assert refused.returncode == 2 and "LORAFORGE_API_KEY" in refused.stderr
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    home = tmp_path / "home"
    with served_app(home, "--host", "0.0.0.0", "--api-key-file", str(key_file), "--model", str(tiny_llama_dir),
                    verb="api", ready_path="v1/models", ready_status=401) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}v1", api_key="wrong", max_retries=0).models.list()
        status, body = raw_post(url + "v1/chat/completions", b"{}")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=f"{url}v1", api_key="s3cret-key", max_retries=0)
        assert greedy(client, "base", tokens=4)
        guesser = openai.OpenAI(base_url=f"{url}v1", api_key="guess", max_retries=0)
        refusals = []
        for _ in range(MAX_FAILURES + 1):  # the wrong tries above (and the readiness polls) count too
            with pytest.raises((openai.AuthenticationError, openai.RateLimitError)) as refused:
                guesser.models.list()
            refusals.append(refused.value.status_code)
        assert 401 in refusals and refusals[-1] == 429
        with pytest.raises(openai.RateLimitError) as locked:  # now even the right key waits out the window
            client.models.list()
        assert "Too many wrong API keys" in locked.value.message


def raw_post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

