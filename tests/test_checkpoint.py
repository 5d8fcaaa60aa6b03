"""A checkpoint restores the optimizer exactly, whatever shape its state has: the training loop's AdamW (torch's,
fused), and bitsandbytes' 8-bit AdamW, which keeps its quantization state in a nested dict (the CUDA-only
choices --optimizer adamw8bit and paged_adamw; bitsandbytes runs the 8-bit optimizer on the CPU too, so this is
tested here)."""

import bitsandbytes as bnb
import pytest
import torch

from core.jobs.runs import create_run, execute_run
from core.lora.model import LoraSettings, add_adapter
from core.store.database import Store
from core.training.checkpoint import load_checkpoint, save_checkpoint
from core.training.config import TrainConfig
from core.training.optimizer import build_optimizer
from tests.job_helpers import tiny_config
from tests.lora_helpers import load


def trained_setup(model_dir, kind, seed=0):
    torch.manual_seed(seed)
    model = load(model_dir)
    add_adapter(model, "run", LoraSettings(r=8, targets="all-linear"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(trainable, lr=1e-2, min_8bit_size=1) if kind == "adamw8bit" else \
        build_optimizer(TrainConfig(lr=1e-2), trainable)
    return model, optimizer


def step(model, optimizer, seed):
    torch.manual_seed(seed)
    ids = torch.randint(0, 300, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["adamw", "adamw8bit"])
def test_resuming_from_a_checkpoint_continues_the_optimizer_exactly(tiny_llama_dir, tmp_path, kind):
    model, optimizer = trained_setup(tiny_llama_dir, kind)
    for seed in (1, 2):
        step(model, optimizer, seed)
    saved = save_checkpoint(tmp_path, 2, model, "run", optimizer, {"note": "kept"}, keep=2)
    step(model, optimizer, 3)
    expected = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    fresh, fresh_optimizer = trained_setup(tiny_llama_dir, kind, seed=99)  # other initial adapter weights
    state = load_checkpoint(saved, fresh, fresh_optimizer)
    step(fresh, fresh_optimizer, 3)
    assert state["note"] == "kept" and state["step"] == 2
    if kind == "adamw":
        assert fresh_optimizer.param_groups[0]["fused"]  # the loop's one-kernel AdamW, restored as such
    if kind == "adamw8bit":
        assert any("state1" in values or "absmax1" in str(values) for values in fresh_optimizer.state.values())
    for name, p in fresh.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, expected[name], rtol=0, atol=0, msg=name)


def test_a_checkpoint_from_the_unfused_optimizer_resumes_with_the_fused_one(tiny_llama_dir, tmp_path):
    """Checkpoints written before AdamW ran fused keep their moments and go on with today's implementation."""
    model, _ = trained_setup(tiny_llama_dir, "adamw")
    trainable = [p for p in model.parameters() if p.requires_grad]
    old_optimizer = torch.optim.AdamW(trainable, lr=1e-2, foreach=False)
    step(model, old_optimizer, 1)
    saved = save_checkpoint(tmp_path, 1, model, "run", old_optimizer, {}, keep=1)

    fresh, fresh_optimizer = trained_setup(tiny_llama_dir, "adamw", seed=99)
    load_checkpoint(saved, fresh, fresh_optimizer)
    assert fresh_optimizer.param_groups[0]["fused"] and not fresh_optimizer.param_groups[0]["foreach"]
    for old_param, new_param in zip(trainable, fresh_optimizer.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(fresh_optimizer.state[new_param]["exp_avg_sq"],
                                   old_optimizer.state[old_param]["exp_avg_sq"], rtol=0, atol=0)
    step(fresh, fresh_optimizer, 2)
    assert all(int(state["step"]) == 2 for state in fresh_optimizer.state.values())


@pytest.mark.parametrize("checkpoint", [True, False], ids=["from-step-2", "no-checkpoint"])
def test_a_restarted_run_forgets_the_steps_it_will_do_again(tiny_llama_dir, tmp_path, checkpoint):
    """Stopped at step 3, a run restarts after its newest checkpoint (or from scratch): the rows its first attempt
    logged after that point are gone before the steps run again, so progress and loss curves never mix attempts."""
    config = tiny_config(tiny_llama_dir, tmp_path, steps=5, save_every=2 if checkpoint else 1000)

    def stop_at_step_3(kind, payload):
        if kind == "metrics" and payload["step"] == 3:
            raise KeyboardInterrupt

    seen = []

    def look_before_the_first_new_row(kind, payload):  # "resumed" comes after the checkpoint is loaded
        if kind in ("resumed", "metrics") and not seen:
            seen.append([row["step"] for row in store.metrics(run_id)])

    with Store() as store:
        run_id = create_run(store, config, status="running")
        with pytest.raises(KeyboardInterrupt):
            execute_run(store, run_id, events=stop_at_step_3)
        assert [row["step"] for row in store.metrics(run_id)] == [1, 2, 3]
        assert store.get_run(run_id)["status"] == "interrupted"

        execute_run(store, run_id, events=look_before_the_first_new_row)
        assert seen == [[1, 2] if checkpoint else [1]]  # the checkpoint's steps, or the new attempt's first
        rows = store.metrics(run_id)
        assert [row["step"] for row in rows] == [1, 2, 3, 4, 5] and store.get_run(run_id)["status"] == "completed"
        assert all(a["time"] <= b["time"] for a, b in zip(rows, rows[1:]))  # one timeline, no second attempt's
