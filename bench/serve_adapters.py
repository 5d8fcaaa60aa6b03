"""Serving many adapters through the OpenAI-compatible API: throughput, per-token latency and memory.

    python bench/serve_adapters.py [--tokens 48] [--requests 2] [--clients 1,4,16]

A real `launch.py api` process on the embedded default model (SmolLM2-135M-Instruct) with eight random,
non-zero adapters (r 16 on the attention projections) registered. Clients stream chat completions (greedy,
`--tokens` new tokens, no early stop) from threads of this process, each sending `--requests` requests in turn,
in three traffic mixes:
    base      every request on the base model
    single    every request on adapter a0
    mixed     request i on adapter a(i mod 4): four adapters in every batch
For each mix and number of clients: requests/s, generated tokens/s, and the per-token latency seen by a client
(gaps between streamed pieces after the first, p50 and p95), plus time to first piece. The mixes take turns at
each client count, so machine noise hits them alike. A second server with --max-batch 1 (requests answered one
at a time, first come first served) runs the largest mixed case again, to show what batching buys.

Memory: the server's resident set (VmRSS) after a base request, after a request on a0 (one adapter loaded) and
after requests on a0..a7 (eight loaded), against the base's figure plus the adapters' file sizes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIXES = ("base", "single", "mixed")
PROMPTS = ["Tell me a short story about a lighthouse keeper.", "Explain how rain forms, step by step.",
           "Write a poem about autumn leaves.", "Describe a busy market in the morning.",
           "What makes a good friend? Give examples.", "Plan a three-day trip to the mountains."]


def make_adapters(home: Path, count: int) -> list[int]:
    """Save `count` random adapters for the default model and register them as a0..a{count-1}; their sizes."""
    import torch

    from core.jobs.adapters import register_adapter
    from core.lora.model import LoraSettings, adapter_modules, add_adapter
    from core.lora.peft_format import save_adapter
    from core.models.loading import load_base_model
    from core.store.database import Store

    loaded = load_base_model("default", dtype="fp32")
    sizes = []
    with Store() as store:
        for index in range(count):
            name = f"a{index}"
            add_adapter(loaded.model, name, LoraSettings(r=16, alpha=32, targets="attention"))
            generator = torch.Generator().manual_seed(index)
            with torch.no_grad():
                for adapter in adapter_modules(loaded.model, name).values():
                    for param in adapter.parameters():
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            folder = save_adapter(loaded.model, name, home.parent / "adapters" / name)
            register_adapter(store, folder, source="imported", name=name)
            sizes.append(sum(f.stat().st_size for f in folder.iterdir()))
    return sizes


class Server:
    """`launch.py api` in its own process."""

    def __init__(self, home: Path, port: int, *options: str) -> None:
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = open(home.parent / f"api-{port}.log", "w")
        self.process = subprocess.Popen([sys.executable, "launch.py", "api", "--port", str(port), "--dtype",
                                         "fp32", *options], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "LORAFORGE_HOME": str(home)})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise SystemExit(f"the API did not start: {Path(self.log.name).read_text()[-2000:]}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def stream_one(url: str, model: str, prompt: str, tokens: int) -> dict:
    """One streamed greedy answer: its piece arrival times and token count."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, arrivals, completion = time.perf_counter(), [], 0
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    return {"start": start, "arrivals": arrivals, "tokens": completion}


def traffic(url: str, mix: str, clients: int, requests: int, tokens: int) -> dict:
    """`clients` threads, each streaming `requests` answers in turn; the mix's figures."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for turn in range(requests):
            number = index * requests + turn
            model = {"base": "base", "single": "a0", "mixed": f"a{number % 4}"}[mix]
            outcome = stream_one(url, model, PROMPTS[number % len(PROMPTS)], tokens)
            with lock:
                results.append(outcome)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    gaps = sorted(b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:]))
    first = [r["arrivals"][0] - r["start"] for r in results if r["arrivals"]]
    return {"mix": mix, "clients": clients, "requests_per_s": len(results) / elapsed,
            "tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
            "token_ms_p50": 1000 * statistics.median(gaps), "token_ms_p95": 1000 * gaps[int(0.95 * (len(gaps) - 1))],
            "first_piece_ms_p50": 1000 * statistics.median(first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per answer")
    parser.add_argument("--requests", type=int, default=2, help="requests per client per case")
    parser.add_argument("--clients", default="1,4,16")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="loraforge-serve-bench-")) / "home"
    os.environ["LORAFORGE_HOME"] = str(home)
    from tests.browser import free_port

    sizes = make_adapters(home, 8)
    server = Server(home, free_port(), "--max-batch", "16", "--max-adapters", "8")
    rows, memory = [], {}
    try:
        stream_one(server.url, "base", PROMPTS[0], 8)
        memory["base"] = server.rss_mb()
        stream_one(server.url, "a0", PROMPTS[0], 8)
        memory["1 adapter"] = server.rss_mb()
        for index in range(1, 8):
            stream_one(server.url, f"a{index}", PROMPTS[0], 8)
        memory["8 adapters"] = server.rss_mb()
        for clients in (int(c) for c in args.clients.split(",")):
            for mix in MIXES:
                rows.append(traffic(server.url, mix, clients, args.requests, args.tokens))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    largest = max(int(c) for c in args.clients.split(","))
    queued = Server(home, free_port(), "--max-batch", "1", "--max-adapters", "8")
    try:
        stream_one(queued.url, "a0", PROMPTS[0], 8)
        one_at_a_time = traffic(queued.url, "mixed", largest, args.requests, args.tokens)
        rows.append({**one_at_a_time, "mix": "mixed, one at a time"})
    finally:
        queued.stop()
    report(rows, memory, sizes)


def report(rows: list[dict], memory: dict, sizes: list[int]) -> None:
    print("\n| mix | clients | requests/s | tokens/s | per-token ms p50 | p95 | first piece ms p50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mix']} | {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['token_ms_p50']:.1f} | {r['token_ms_p95']:.1f} | {r['first_piece_ms_p50']:.0f} |")
    print("\nmixed / single per-token latency (p50):")
    for clients in sorted({r["clients"] for r in rows if r["mix"] == "mixed"}):
        single = next(r for r in rows if r["mix"] == "single" and r["clients"] == clients)
        mixed = next(r for r in rows if r["mix"] == "mixed" and r["clients"] == clients)
        print(f"  {clients} clients: {mixed['token_ms_p50'] / single['token_ms_p50']:.2f}x")
    adapters_mb = sum(sizes) / 2**20
    print(f"\nresident memory: base {memory['base']:.0f} MB, 1 adapter {memory['1 adapter']:.0f} MB, "
          f"8 adapters {memory['8 adapters']:.0f} MB; the 8 adapters' files {adapters_mb:.1f} MB; "
          f"8 adapters / (base + files) = {memory['8 adapters'] / (memory['base'] + adapters_mb):.3f}")


if __name__ == "__main__":
    main()
