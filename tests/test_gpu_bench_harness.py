"""The GPU benchmark's harness, run on the CPU with a tiny random model: a GPU is lent rarely and briefly, so a
harness broken since its last run would waste the one chance to measure. This checks mechanics, not speed."""

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from bench.random_llama import SIZES, write_token_rows

REPO = Path(__file__).resolve().parents[1]


def test_token_rows_are_exactly_the_asked_length_in_the_vocabulary(tmp_path):
    from bench.random_llama import word_tokenizer

    tokenizer = word_tokenizer(SIZES["tiny"]["vocab_size"])
    rows = [json.loads(line)["text"]
            for line in write_token_rows(tmp_path / "t.jsonl", 3, 50, 512).read_text().splitlines()]
    ids = [tokenizer(text)["input_ids"] for text in rows]
    assert [len(row) for row in ids] == [49, 49, 49]  # + the end token the renderer appends = 50
    assert all(0 <= token < 511 for row in ids for token in row) and len({tuple(row) for row in ids}) == 3


def test_the_gpu_harness_trains_both_systems_and_reports_on_the_cpu(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "bench/gpu_throughput.py", "--device", "cpu", "--sizes", "tiny", "--modes", "lora,qlora",
               "--peft-sizes", "tiny", "--seq", "48", "--batch", "2", "--steps", "4", "--out", str(out)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = {(row["mode"], row["system"]): row
            for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == [("lora", "forge"), ("lora", "peft"), ("qlora", "forge"), ("qlora", "peft")]
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["tokens_per_s"] > 0 and row["step_tflop"] > 0 and 4 < row["train_loss"] < 8  # ln(512) = 6.2
    for system in ("forge", "peft"):
        assert rows[("qlora", system)]["weight_mb"] < 0.2 * rows[("lora", system)]["weight_mb"]  # nf4 against fp32
    assert "| tiny (" in finished.stdout and "QLoRA at" in finished.stdout and "LoRA Forge at" in finished.stdout
    with safe_open(out / "model-tiny" / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("model.embed_tokens.weight").shape == (512, 64)
