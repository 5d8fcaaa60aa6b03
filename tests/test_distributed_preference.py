"""DPO and ORPO with several processes (torchrun's agent, gloo on this CPU): the adapter and the logged metrics of one
process, and a single-process run resumed on two exactly.

The data are chosen so that rank 1 has an empty share: 19 training pairs in batches of 3 leave one pair for the
last batch of each epoch (step 4's second micro-batch), and 7 evaluation pairs leave one for the last eval batch."""

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.jobs.runs import execute_run, record_run
from core.store.database import Store
from core.training.loop import train
from core.training.preference import METRICS
from tests.test_distributed import TOLERANCE, cli, finished, largest_difference
from tests.test_preference import pair_config, write_pairs

STEPS = 4
COMPARED = ("loss", "grad_norm", "tokens", *METRICS)  # what a row says about the training, not about the machine


def settings(model_dir: Path, dataset: str, method: str):
    return pair_config(model_dir, dataset, method=method, eval_share=0.3, max_steps=STEPS, batch_size=3, grad_accum=2,
                       eval_every=2, save_every=2, targets="qv", rank=4, max_len=64, sample_prompts=["hi"],
                       sample_max_new_tokens=2)


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [(row["step"], row["split"]) for row in got] == [(row["step"], row["split"]) for row in want]
    for mine, theirs in zip(got, want):
        for name in COMPARED:
            if name in theirs:
                assert mine[name] == pytest.approx(theirs[name], abs=TOLERANCE), (mine["step"], mine["split"], name)


@pytest.fixture(scope="module")
def single(tiny_llama_dir, tmp_path_factory):
    """method -> (its config, the result of one uninterrupted single-process run), each method trained once."""
    folder = tmp_path_factory.mktemp("single")
    pairs = write_pairs(folder / "pairs.jsonl", 26)  # 19 to train, 7 held out (eval_share 0.3)
    runs = {}

    def run(method: str):
        if method not in runs:
            config = settings(tiny_llama_dir, pairs, method)
            runs[method] = config, train(config, folder / method)
            assert runs[method][1].status == "completed"
        return runs[method]

    return run


def adapter(result) -> dict:
    return load_file(Path(result.adapter_dir) / "adapter_model.safetensors")


@pytest.mark.parametrize("method, strategy", [("dpo", "ddp"), ("orpo", "ddp"), ("dpo", "fsdp")])
def test_two_processes_train_the_preference_adapter_and_metrics_of_one(single, method, strategy, tmp_path,
                                                                        loraforge_home):
    """fsdp: the reference pass runs the sharded base with the adapter off, on every rank."""
    config, one = single(method)
    config.to_yaml(tmp_path / "run.yaml")
    final = finished(cli("train", "--config", str(tmp_path / "run.yaml"), "--nproc", "2", "--strategy", strategy,
                         home=loraforge_home))
    assert final["status"] == "completed" and final["steps"] == STEPS
    reference = adapter(one)
    assert largest_difference(final["adapter_dir"], reference) < TOLERANCE
    assert max(float(t.abs().max()) for t in reference.values()) > 100 * TOLERANCE  # the adapter did move
    got = rows(final["run_dir"])
    assert_same_rows(got, rows(one.run_dir))
    assert [row["step"] for row in got if row["split"] == "eval"] == [0, 2, 4]
    assert all(row["world_size"] == 2 for row in got if row["split"] == "train")


def test_a_single_process_dpo_run_resumes_on_two_processes_exactly(single, loraforge_home):
    config, one = single("dpo")

    def stop_after_step_2(kind: str, payload: dict) -> None:
        if kind == "metrics" and payload["split"] == "train" and payload["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cancel sends: checkpoint this step and stop

    with Store() as store:
        run_id, data = record_run(store, config, status="running")
        stopped = execute_run(store, run_id, events=stop_after_step_2, data=data)
    assert stopped.status == "interrupted" and stopped.steps == 2
    resumed = finished(cli("resume", run_id, "--nproc", "2", home=loraforge_home))
    assert resumed["status"] == "completed" and resumed["steps"] == STEPS
    assert largest_difference(resumed["adapter_dir"], adapter(one)) < TOLERANCE
    # the stop cut step 2's evaluation short, so the training rows are compared
    train_rows = [[row for row in rows(run_dir) if row["split"] == "train"] for run_dir in (resumed["run_dir"],
                                                                                            one.run_dir)]
    assert_same_rows(*train_rows)
