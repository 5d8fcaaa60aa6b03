"""The API engine in this process: adapters kept within a bound, a full queue answered 429, a client that goes
away mid-stream stops its generation, and the web app serving the same routes under /v1."""

import asyncio
import queue
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from app.cli.api import build_api_server
from core.chat.generate import Sampling, conversation, stream_reply
from core.jobs.adapters import register_adapter
from core.lora.model import LoraSettings, active_adapters, adapter_modules, adapter_names, add_adapter, delete_adapter
from core.lora.peft_format import load_adapter, save_adapter
from core.models.loading import load_base_model
from core.serve.engine import Engine, Job
from core.store.database import Store
from tests.browser import free_port
from tests.test_api_server import make_adapter

GREEDY = Sampling(max_new_tokens=12, temperature=0)


@pytest.fixture
def served(tiny_llama_dir, loraforge_home):
    """The tiny Llama with three registered adapters, a fresh engine, and a way to run one job to its end."""
    with Store() as store:
        rows = [register_adapter(store, make_adapter(tiny_llama_dir, loraforge_home.parent / f"a{i}", seed=i),
                                 source="imported", name=f"a{i}") for i in range(3)]
    loaded = load_base_model(str(tiny_llama_dir))
    return loaded, rows


def answer(engine: Engine, adapters, prompt=(1, 5, 9)) -> str:
    events: queue.Queue = queue.Queue()
    engine.submit(Job(list(prompt), adapters, GREEDY, (), emit=events.put))
    text = ""
    while True:
        kind, value = events.get(timeout=60)
        if kind == "text":
            text += value
        elif kind == "error":
            raise value
        else:
            return text


def test_adapters_beyond_the_bound_are_dropped_and_reload_the_same(served):
    loaded, rows = served
    engine = Engine(loaded.model, loaded.tokenizer, max_adapters=2)
    first = [answer(engine, ((row, 1.0),)) for row in rows]
    assert len(set(first)) == 3
    assert sorted(n for n in adapter_names(loaded.model) if n.startswith("serve-")) == [
        f"serve-{rows[1]['id']}", f"serve-{rows[2]['id']}"]  # the least recently used (a0) went
    assert answer(engine, ((rows[0], 1.0),)) == first[0]
    assert len([n for n in adapter_names(loaded.model) if n.startswith("serve-")]) == 2


class SlowSteps:
    """Make each decoding step take `delay` seconds, so what happens between steps can be watched."""

    def __init__(self, monkeypatch, delay: float) -> None:
        from core.chat import decoding

        self.steps = 0
        original = decoding.DecodingBatch.step

        def step(batch):
            self.steps += 1
            time.sleep(delay)
            return original(batch)

        monkeypatch.setattr(decoding.DecodingBatch, "step", step)


@pytest.fixture
def api_url(served):
    """The /v1 routes of `launch.py api` on a real socket, in a server thread of this process."""
    loaded, _ = served
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, max_waiting=1)
    server = uvicorn.Server(uvicorn.Config(build_api_server(loaded, engine, "127.0.0.1", None),
                                           port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}/v1", engine
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def test_a_client_leaving_mid_stream_stops_its_generation(api_url, monkeypatch):
    url, engine = api_url
    body = {"model": "a1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "temperature": 0}
    whole = httpx.post(f"{url}/chat/completions", json=body, timeout=60).json()
    assert whole["usage"]["completion_tokens"] > 100  # left alone, this answer runs long
    slow = SlowSteps(monkeypatch, 0.05)
    body["stream"] = True
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert sum(line.startswith("data: ") for line in received) >= 3 and "data: [DONE]" not in received
    deadline = time.monotonic() + 5
    while engine._running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine._running
    steps_at_leave = slow.steps
    time.sleep(0.3)
    assert slow.steps == steps_at_leave < 60  # nothing decodes for the gone client (200 tokens would take 10 s)


def test_a_full_queue_answers_429_in_openai_shape(api_url, monkeypatch):
    url, _ = api_url
    SlowSteps(monkeypatch, 0.05)
    body = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "temperature": 0}

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{url}/chat/completions", json=body) for _ in range(5)))

    answers = asyncio.run(fire())
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) >= 2 and 429 in statuses  # one decodes, one waits, the rest are refused
    refused = next(answer.json() for answer in answers if answer.status_code == 429)
    assert refused["error"]["type"] == "rate_limit_error" and "busy" in refused["error"]["message"]


def test_the_web_app_serves_the_api_under_v1(served):
    from fastapi.testclient import TestClient

    from app.cli.serve import build_server

    loaded, _ = served
    engine = Engine(loaded.model, loaded.tokenizer)
    app = build_server(loaded, "127.0.0.1", 7860, None, "2gb", api=(engine, None))
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        names = [entry["id"] for entry in client.get("/v1/models").json()["data"]]
        reply = client.post("/v1/chat/completions", json={"model": "a2", "messages": [
            {"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0})
        page = client.get("/")
    assert names == ["base", "a0", "a1", "a2"]
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_foreign_hosts_and_pages_are_refused(api_url):
    url, _ = api_url
    body = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    unknown = httpx.get(f"{url}/embeddings")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    rebound = httpx.post(f"{url}/chat/completions", json=body, headers={"Host": "evil.example"})
    from_a_page = httpx.post(f"{url}/chat/completions", json=body, headers={"Origin": "http://evil.example"})
    assert rebound.status_code == 403 and from_a_page.status_code == 403
    assert httpx.post(f"{url}/chat/completions", json=body, timeout=60).status_code == 200


def test_the_web_app_on_another_interface_keeps_the_api_off_without_a_key(served):
    from fastapi.testclient import TestClient

    from app.cli.serve import build_server

    loaded, _ = served
    app = build_server(loaded, "0.0.0.0", 7860, ("me", "pw"), "2gb", api=(Engine(loaded.model, loaded.tokenizer), None))
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        refused = client.get("/v1/models")
    assert refused.status_code == 401 and "LORAFORGE_API_KEY" in refused.json()["error"]["message"]


@pytest.mark.slow
def test_the_default_model_answers_as_the_cli_does(default_model, loraforge_home):
    """Real weights: a greedy answer through the engine, with an adapter and without, equals `stream_reply`
    (the CLI's path) under the same adapter."""
    model, tokenizer = default_model.model, default_model.tokenizer
    add_adapter(model, "made", LoraSettings(r=8, targets="attention"), activate=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for adapter in adapter_modules(model, "made").values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.02)
    folder = save_adapter(model, "made", loraforge_home.parent / "made")
    delete_adapter(model, "made")
    with Store() as store:
        row = register_adapter(store, folder, source="imported", name="made")
    messages = conversation("Name three colours of the rainbow.")
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    engine = Engine(model, tokenizer)
    try:
        for adapters in ((), ((row, 1.0),)):
            events: queue.Queue = queue.Queue()
            engine.submit(Job(prompt, adapters, Sampling(max_new_tokens=40, temperature=0), (), emit=events.put))
            served_text = ""
            while (event := events.get(timeout=120))[0] == "text":
                served_text += event[1]
            assert event[0] == "done"
            load_adapter(model, folder, name="oracle", activate=False)
            with active_adapters(model, {"oracle": 1.0} if adapters else {}):
                *_, expected = stream_reply(model, tokenizer, messages, Sampling(max_new_tokens=40, temperature=0))
            delete_adapter(model, "oracle")
            assert served_text == expected
    finally:  # the model is shared with other tests: leave it as it came
        for name in adapter_names(model):
            if name.startswith(("serve-", "oracle")):
                delete_adapter(model, name)


def test_the_pages_chat_and_the_api_share_the_model_without_mixing(served):
    """The page's chat switches the model's active set for a whole answer while the engine steps its batch with
    per-row adapters: each takes its turn at the model, and neither answer changes."""
    loaded, rows = served
    model, tokenizer = loaded.model, loaded.tokenizer
    load_adapter(model, rows[0]["path"], name="page", activate=False)
    messages = conversation("Hello there")
    sampling = Sampling(max_new_tokens=40, temperature=0)

    def page_answer() -> str:  # as app/web/chat/stream.py asks for it
        *_, text = stream_reply(model, tokenizer, messages, sampling, {"page": 1.0})
        return text

    engine = Engine(model, tokenizer)
    alone = (page_answer(), answer(engine, ((rows[1], 1.0),)))
    for _ in range(3):
        results: list[str] = []
        page = threading.Thread(target=lambda: results.append(page_answer()))
        page.start()
        served_text = answer(engine, ((rows[1], 1.0),))
        page.join()
        assert (results[0], served_text) == alone
    *_, base_text = stream_reply(model, tokenizer, messages, sampling)
    assert alone[0] != base_text and alone[1] != answer(engine, ())  # both adapters change their answers


def test_a_job_that_fails_to_join_fails_alone(served):
    loaded, rows = served
    engine = Engine(loaded.model, loaded.tokenizer)
    outcomes: dict[str, queue.Queue] = {name: queue.Queue() for name in ("good", "bad", "after")}
    bad = Sampling(max_new_tokens=8, temperature=1.0, seed=2**70)  # past torch's seed range: the row cannot start
    for name, sampling in (("good", GREEDY), ("bad", bad), ("after", GREEDY)):
        engine.submit(Job([1, 5, 9], ((rows[0], 1.0),), sampling, (), emit=outcomes[name].put))

    def last_event(events: queue.Queue) -> str:
        while (event := events.get(timeout=60))[0] == "text":
            pass
        return event[0]

    assert [last_event(outcomes[name]) for name in ("good", "bad", "after")] == ["done", "error", "done"]


def test_cancelled_waiting_jobs_do_not_fill_the_queue(served, monkeypatch):
    loaded, _ = served
    SlowSteps(monkeypatch, 0.05)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, max_waiting=1)
    long = Sampling(max_new_tokens=40, temperature=0)
    running, waiting = (Job([1, 5, 9], (), long, (), emit=lambda event: None) for _ in range(2))
    engine.submit(running)
    deadline = time.monotonic() + 10
    while not engine._running and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.submit(waiting)
    waiting.cancelled.set()  # its client went away while it waited
    engine.submit(Job([1, 5, 9], (), long, (), emit=lambda event: None))  # would be a 429 if the gone one counted
    engine.close()


def test_a_non_streaming_client_that_gives_up_stops_its_generation(api_url, monkeypatch):
    url, engine = api_url
    slow = SlowSteps(monkeypatch, 0.05)
    body = {"model": "a1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "temperature": 0,
            "stop": ["never-in-this-answer"]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/chat/completions", json=body, timeout=0.6)
    deadline = time.monotonic() + 5
    while engine._running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine._running and slow.steps < 100  # 200 tokens would have taken 10 s


def test_an_adapter_whose_files_changed_is_loaded_again(served, tiny_llama_dir, loraforge_home):
    from core.chat.contenders import load_registered

    loaded, rows = served
    engine = Engine(loaded.model, loaded.tokenizer)
    before = answer(engine, ((rows[0], 1.0),))
    make_adapter(tiny_llama_dir, loraforge_home.parent / "a0", seed=9)  # new weights in the registered folder
    assert answer(engine, ((rows[0], 1.0),)) != before
    assert load_registered(loaded.model, rows[0], "serve") == f"serve-{rows[0]['id']}"


def test_names_that_would_not_resolve_are_listed_by_id(served, tiny_llama_dir, loraforge_home):
    from core.serve import catalog

    _, rows = served
    with Store() as store:
        odd = [register_adapter(store, rows[i]["path"], source="imported", name=name)
               for i, name in ((0, "pirate:v2"), (1, "base"))]
    listed = [entry["id"] for entry in catalog.models("tiny")]
    assert "pirate:v2" in listed and str(odd[1]["id"]) in listed and listed.count("base") == 1
    assert catalog.resolve("pirate:v2", "tiny")[0][0]["id"] == odd[0]["id"]
    assert catalog.resolve(str(odd[1]["id"]), "tiny")[0][0]["id"] == odd[1]["id"]
