"""The training engine on a tiny random Llama: what a run writes, how it resumes, and how it fails."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import core.training.checkpoint
import core.training.loop
from core.models.devices import cpu_has_bf16_products, training_dtype
from core.store.database import Store
from core.training.checkpoint import CheckpointError, checkpoints, newest_checkpoint
from core.training.config import ConfigError, TrainConfig
from core.training.loop import TrainingError, train
from core.training.optimizer import learning_rate

REPO = Path(__file__).resolve().parents[1]
DATES = str(REPO / "assets/samples/dates.train.jsonl")
DATES_EVAL = str(REPO / "assets/samples/dates.eval.jsonl")


def tiny_config(model_dir, **overrides) -> TrainConfig:
    settings = dict(base=str(model_dir), dataset=DATES, eval_share=0.05, max_steps=6, batch_size=4, lr=5e-3,
                    save_every=2, eval_every=3, dropout=0.1, targets="all-linear", max_len=128,
                    sample_max_new_tokens=8)
    return TrainConfig(**{**settings, **overrides})


def adapter_tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "adapter_model.safetensors")


def short_samples(folder: Path) -> str:
    """A --config file that keeps checkpoint samples short: a tiny random model only babbles."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text("sample_max_new_tokens: 8\n")
    return str(folder / "run.yaml")


def cli(*args, home, **options) -> subprocess.Popen:
    env = {**os.environ, "LORAFORGE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def test_a_run_writes_metrics_checkpoints_samples_and_a_peft_adapter(tiny_llama_dir, tmp_path):
    result = train(tiny_config(tiny_llama_dir, keep_checkpoints=2), tmp_path / "run")
    run = tmp_path / "run"
    assert result.status == "completed" and result.steps == result.total_steps == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 3, 6]  # 0: the base, before training
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]  # a random model learns the data's tokens fast
    assert result.tokens == train_rows[-1]["tokens"] > 0 and result.tokens_per_s > 0
    assert [p.name for p in checkpoints(run)] == ["step-000004", "step-000006"]  # only the newest two are kept
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {2, 4, 6} and {s["prompt_index"] for s in samples} == {0, 1, 2}
    assert "Rewrite the date" in samples[0]["prompt"]
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert TrainConfig.from_yaml(run / "config.yaml") == tiny_config(tiny_llama_dir, keep_checkpoints=2)


def test_qlora_trains_fp32_adapters_on_an_nf4_base(tiny_llama_dir, tmp_path):
    result = train(tiny_config(tiny_llama_dir, quant="nf4", eval_share=0, max_steps=4, save_every=4), tmp_path / "run")
    assert result.status == "completed"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    tensors = adapter_tensors(result.adapter_dir)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert any(float(t.abs().max()) > 0 for key, t in tensors.items() if "lora_B" in key)  # B moved off zero



def test_a_bf16_base_trains_fp32_adapters_to_the_fp32_runs_losses(tiny_llama_dir, tmp_path):
    """What "auto" picks on a CPU with bf16 products: the base in bf16, the adapter, attention and the loss in fp32."""
    losses = {}
    for dtype in ("fp32", "bf16"):
        result = train(tiny_config(tiny_llama_dir, dtype=dtype, eval_share=0, max_steps=4, save_every=4, dropout=0.0),
                       tmp_path / dtype)
        assert result.status == "completed"
        rows = [json.loads(line) for line in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
        losses[dtype] = [row["loss"] for row in rows if row["split"] == "train"]
        assert {t.dtype for t in adapter_tensors(result.adapter_dir).values()} == {torch.float32}
    assert losses["bf16"][-1] < losses["bf16"][0]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01)


def test_auto_trains_in_bf16_exactly_on_cpus_with_bf16_products():
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    bf16_products = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_has_bf16_products() == bf16_products or not flags
    assert training_dtype("auto", "none", "cpu") == ("bf16" if cpu_has_bf16_products() else "auto")
    assert training_dtype("fp32", "none", "cpu") == "fp32"  # asked for: kept
    assert training_dtype("auto", "nf4", "cpu") == "auto"  # a quantized base computes as it always did


def test_an_int8_run_trains_without_flooding_the_log(tiny_llama_dir, tmp_path, caplog):
    """bitsandbytes logs its int8 input cast at every layer's every forward; a job.log would fill with it."""
    result = train(tiny_config(tiny_llama_dir, quant="int8", eval_share=0, max_steps=2, save_every=2), tmp_path / "run")
    assert result.status == "completed"
    assert "MatMul8bitLt" not in caplog.text and "pip install kernels" not in caplog.text


def test_evaluating_during_a_qlora_run_leaves_its_training_unchanged(tiny_llama_dir, tmp_path):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first forward in eval mode, and the
    repacked weight has no backward: the training steps after an eval would lose the gradient through every
    frozen layer. Evaluating (and sampling) must not change the adapter a run trains."""
    settings = dict(quant="nf4", eval_share=0.1, max_steps=4, save_every=4, dropout=0.0, sample_prompts=["hi"])
    quiet = train(tiny_config(tiny_llama_dir, eval_every=1000, **settings), tmp_path / "quiet")
    evaluated = train(tiny_config(tiny_llama_dir, eval_every=1, **settings), tmp_path / "evaluated")
    assert quiet.status == evaluated.status == "completed"
    metrics = (tmp_path / "evaluated" / "metrics.jsonl").read_text()
    assert metrics.count('"split": "eval"') == 5  # step 0 (the base), then after every step
    expected, got = adapter_tensors(quiet.adapter_dir), adapter_tensors(evaluated.adapter_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)

def logged_step(runs: Path, step: int) -> bool:
    """Whether the run's metrics.jsonl has logged training step `step`."""
    return any(f'"step": {step}, "split": "train"' in path.read_text() for path in runs.glob("*/metrics.jsonl"))


def test_resume_after_sigkill_ends_with_the_same_adapter(tiny_llama_dir, tmp_path):
    """A run killed with SIGKILL mid-training and resumed equals an uninterrupted run (within 1e-5)."""
    common = ["--config", short_samples(tmp_path), "--base", str(tiny_llama_dir), "--dataset", DATES,
              "--max-steps", "40", "--save-every", "4", "--batch-size", "4", "--lr", "5e-3", "--dropout", "0.1",
              "--targets", "all-linear", "--max-len", "128"]
    reference = cli("train", *common, home=tmp_path / "reference")
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    expected = adapter_tensors(json.loads(out.strip().splitlines()[-1])["adapter_dir"])

    home = tmp_path / "interrupted"
    job = cli("train", *common, home=home)
    runs = home / "runs"
    deadline = time.monotonic() + 300
    while not logged_step(runs, 10):  # past the checkpoint at step 8, short of the one at 12
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read() if job.poll() else "timeout"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=60)
    run_dir = next(runs.iterdir())
    assert not (run_dir / "adapter").exists(), "the run finished before it could be killed"

    with Store(home / "loraforge.db") as store:
        assert store.mark_stale_runs_interrupted() == [run_dir.name]
    resumed = cli("resume", run_dir.name, home=home)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "Resuming at step" in err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["steps"] == 40 and final["status"] == "completed"
    got = adapter_tensors(final["adapter_dir"])
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row["split"] == "train"] == list(range(1, 41))  # steps redone: once
    with Store(home / "loraforge.db") as store:
        run = store.get_run(run_dir.name)
        assert run["status"] == "completed" and store.adapters()[0]["run_id"] == run_dir.name
        assert [m["step"] for m in store.metrics(run_dir.name, "train")] == list(range(1, 41))


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tiny_llama_dir, tmp_path):
    home = tmp_path / "home"
    job = cli("train", "--config", short_samples(tmp_path), "--base", str(tiny_llama_dir), "--dataset", DATES,
              "--max-steps", "500", "--save-every", "1000", "--batch-size", "4", "--max-len", "128", home=home)
    deadline = time.monotonic() + 300
    while not logged_step(home / "runs", 1):  # a training step, not only the evaluation before it
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 3, err  # stopped early, resumable
    final = json.loads(out.strip().splitlines()[-1])
    assert final["status"] == "interrupted" and 0 < final["steps"] < 500
    assert newest_checkpoint(final["run_dir"]).name == f"step-{final['steps']:06d}"
    with Store(home / "loraforge.db") as store:
        assert store.get_run(final["run_id"])["status"] == "interrupted"


def test_a_stop_during_an_evaluation_cuts_it_short_and_checkpoints_the_step(tiny_llama_dir, tmp_path):
    config = tiny_config(tiny_llama_dir, save_every=1000, eval_every=2)
    armed = []

    def arm_after_step_2(kind, payload):
        if kind == "metrics" and payload.get("step") == 2 and payload["split"] == "train":
            armed.append(0)

    def stop_in_the_evaluation(module, args):
        if armed and type(module).__name__ == "LoraLayer" and not torch.is_grad_enabled():
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(stop_in_the_evaluation)
    try:
        stopped = train(config, tmp_path / "run", events=arm_after_step_2)
    finally:
        hook.remove()
    assert (stopped.status, stopped.steps) == ("interrupted", 2)
    assert stopped.eval_loss is None  # its one evaluation, at step 0, is the base's loss and not the run's
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-000002"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["split"]) for row in logged] == [(0, "eval"), (1, "train"), (2, "train")]  # cut


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["cancel", "ctrl-c"])
def test_a_stop_during_a_step_abandons_it_checkpoints_the_last_one_and_resumes_exactly(tiny_llama_dir, tmp_path, sig):
    """On a CPU one step of a large batch outlasts the seconds a cancel waits before SIGKILL. A stop (a cancel's
    SIGTERM, or Ctrl-C) that lands in a step's forward pass drops that step at once and checkpoints the last
    finished one, random state included (dropout is on), so the resumed run equals an uninterrupted one."""
    config = tiny_config(tiny_llama_dir, save_every=1000, eval_every=1000)
    expected = adapter_tensors(train(config, tmp_path / "reference").adapter_dir)
    calls_in_step_3 = []

    def arm_after_step_2(kind, payload):
        if kind == "metrics" and payload.get("step") == 2:
            calls_in_step_3.append(0)

    def stop_a_few_layers_in(module, args):
        if calls_in_step_3 and type(module).__name__ == "LoraLayer":
            calls_in_step_3.append(module)
            if len(calls_in_step_3) == 6:
                os.kill(os.getpid(), sig)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(stop_a_few_layers_in)
    try:
        stopped = train(config, tmp_path / "run", events=arm_after_step_2)
    finally:
        hook.remove()
    assert (stopped.status, stopped.steps, stopped.adapter_dir) == ("interrupted", 2, None)
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-000002"]
    assert [json.loads(line)["step"]
            for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    resumed = train(config, tmp_path / "run", resume=True)
    assert (resumed.status, resumed.steps) == ("completed", 6)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if row["split"] == "train"] == [1, 2, 3, 4, 5, 6]  # each step once
    got = adapter_tensors(resumed.adapter_dir)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    real_loss, calls = core.training.loop.trained_token_loss, []

    def loss_that_explodes_at_step_4(model, inputs, *decoder):
        calls.append(1)
        loss, count = real_loss(model, inputs, *decoder)
        return (loss * float("nan"), count) if len(calls) == 4 else (loss, count)

    monkeypatch.setattr(core.training.loop, "trained_token_loss", loss_that_explodes_at_step_4)
    with pytest.raises(TrainingError, match="loss became nan at step 4.*Lower the learning rate"):
        train(tiny_config(tiny_llama_dir, eval_share=0), tmp_path / "run")
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-000002"]
    assert not (tmp_path / "run" / "adapter").exists()


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    real_save, saves = core.training.checkpoint.save_tensors, []

    def save_that_fills_the_disk(tensors, path, *args, **kwargs):
        if "step-000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        saves.append(path)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(core.training.checkpoint, "save_tensors", save_that_fills_the_disk)
    with pytest.raises(CheckpointError, match=r"disk is full .* step 4 .*step-000002\) is intact"):
        train(tiny_config(tiny_llama_dir, eval_share=0), tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]  # no partial folder left behind
    assert len(load_file(root / "step-000002" / "trainable.safetensors")) > 0


@pytest.mark.parametrize("fail_from_step", [1, 3])
def test_out_of_memory_retries_with_half_the_batch_and_the_same_effective_batch(
    tiny_llama_dir, tmp_path, monkeypatch, fail_from_step
):
    """Simulated CUDA OOM for micro-batches of 4 examples: the run retries with 2 x 2 and ends as a 4 x 1 run would."""
    # fp32: a bf16 base rounds each product's output, so rows split differently differ by more than the summation
    config = tiny_config(tiny_llama_dir, eval_share=0, dropout=0.0, max_steps=6, dtype="fp32")
    expected = adapter_tensors(train(config, tmp_path / "reference").adapter_dir)
    real_loss, calls, events = core.training.loop.trained_token_loss, [], []

    def loss_without_room_for_four(model, inputs, *decoder):
        calls.append(1)
        prefixes = inputs.get("segment_prefixes", ())  # shared prefixes are segments of the row too
        examples = len(inputs["cu_seq_lens_q"]) - 1 - len({p for p in prefixes if p >= 0})
        if len(calls) >= fail_from_step and examples > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(model, inputs, *decoder)

    monkeypatch.setattr(core.training.loop, "trained_token_loss", loss_without_room_for_four)
    result = train(config, tmp_path / "run", events=lambda kind, payload: events.append((kind, payload)))
    assert ("oom_retry", {"batch_size": 2, "grad_accum": 2}) in events
    assert result.status == "completed" and result.steps == 6
    retried = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (retried.batch_size, retried.grad_accum) == (2, 2)
    got = adapter_tensors(result.adapter_dir)
    for key in expected:  # same examples per step; only the summation order differs
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=0, msg=key)


def test_out_of_memory_with_an_odd_batch_names_the_settings_to_change(tiny_llama_dir, tmp_path, monkeypatch):
    def no_memory(model, inputs, *decoder):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(core.training.loop, "trained_token_loss", no_memory)
    with pytest.raises(TrainingError, match="ran out of memory with --batch-size 3.*--grad-accum.*--quant nf4"):
        train(tiny_config(tiny_llama_dir, batch_size=3), tmp_path / "run")


def test_learning_rate_schedule():
    config = TrainConfig(dataset="x", lr=1e-3, warmup_ratio=0.1, schedule="cosine")
    rates = [learning_rate(config, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3) and rates[55] == pytest.approx(5e-4, rel=0.05) and rates[-1] < 1e-6
    linear = TrainConfig(dataset="x", lr=1e-3, warmup_ratio=0, schedule="linear")
    assert learning_rate(linear, 50, 100) == pytest.approx(5e-4)
    constant = TrainConfig(dataset="x", lr=1e-3, warmup_ratio=0, schedule="constant")
    assert {learning_rate(constant, s, 100) for s in range(100)} == {1e-3}


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(dataset=""), "No dataset given"),
        (dict(rank=0), "rank is 0"),
        (dict(lr=3.0), "lr is 3.0"),
        (dict(quant="nf2"), "quant is 'nf2'"),
        (dict(max_steps=0), "max_steps is 0"),
        (dict(dropout=1.0), "dropout is 1.0"),
        (dict(max_len=1), "max_len is 1; an example needs room for its chat template and an answer: use 8 or more"),
        (dict(max_grad_norm=0.0), "max_grad_norm is 0.0; it must be positive"),
        (dict(weight_decay=-0.1), "weight_decay is -0.1; use 0 or more"),
        (dict(sample_max_new_tokens=0), "sample_max_new_tokens is 0; it must be 1 or more"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"dataset": DATES, **settings}).check()


def test_yaml_config_round_trip_and_unknown_keys(tmp_path):
    config = TrainConfig(dataset=DATES, rank=4, targets=["q_proj", "v_proj"], sample_prompts=["hi"])
    config.to_yaml(tmp_path / "run.yaml")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml") == config
    (tmp_path / "typo.yaml").write_text("dataset: x\nrnak: 4\n")
    with pytest.raises(ConfigError, match="Unknown setting.*rnak"):
        TrainConfig.from_yaml(tmp_path / "typo.yaml")


@pytest.mark.parametrize(
    "line, message",
    [
        ("rank: banana", "rank in .*run.yaml is 'banana'; it must be a whole number."),
        ("rank: 2.5", "rank in .*run.yaml is 2.5; it must be a whole number."),
        ("lr: fast", "lr in .*run.yaml is 'fast'; it must be a number."),
        ("packing: maybe", "packing in .*run.yaml is 'maybe'; it must be true or false."),
        ("targets: 7", "targets in .*run.yaml is 7; it must be text or a list of text."),
        ("max_steps: [3]", r"max_steps in .*run.yaml is \[3\]; it must be a whole number or empty."),
    ],
)
def test_a_config_file_with_a_wrongly_typed_value_names_the_setting(tmp_path, line, message):
    (tmp_path / "run.yaml").write_text(f"dataset: data.jsonl\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_yaml(tmp_path / "run.yaml")


def test_a_config_file_takes_whole_numbers_written_as_decimals(tmp_path):
    (tmp_path / "run.yaml").write_text("dataset: data.jsonl\nrank: 16.0\nlr: 1\nmax_steps: null\n")
    config = TrainConfig.from_yaml(tmp_path / "run.yaml")
    assert (config.rank, type(config.rank), config.lr, type(config.lr), config.max_steps) == (16, int, 1.0, float, None)
