"""The single-process side of distributed training, fast: each rank's share of a batch (of preference pairs too),
the placeholder of an empty share, the per-device memory estimate by strategy and its refusal, and the launcher's
refusals of bad node flags."""

import json

import pytest
import torch

from app.web.runs.view import world_line
from app.web.train.form import form_values, to_config
from core.data import BatchSettings, iterate_batches
from core.data.batch import share_of
from core.data.preference import RenderedPair, iterate_pair_batches
from core.data.render import IGNORE_INDEX, RenderedExample
from core.models.loading import load_base_model
from core.training.config import ConfigError, TrainConfig
from core.training.distributed import Replicas, World, default_processes, process_choices
from core.training.launcher import Nodes, RanksFailed
from core.training.preference import PreferenceObjective, pair_count
from core.training.preflight import preflight_on
from tests.job_helpers import DATES


def examples(count: int) -> list[RenderedExample]:
    return [RenderedExample(number=i + 1, input_ids=[10 + i, 20 + i, 30 + i], labels=[IGNORE_INDEX, 20 + i, 30 + i],
                            full_length=3) for i in range(count)]


def test_the_shares_of_a_batch_are_the_batch_in_order():
    batch = [7, 3, 9, 1, 4]
    for ranks in (1, 2, 3, 5, 8):
        shares = [share_of(batch, rank, ranks) for rank in range(ranks)]
        assert sum(shares, []) == batch
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("packing", [True, False])
def test_ranks_together_see_every_batch_and_an_empty_share_trains_nothing(packing):
    data, settings = examples(7), BatchSettings(packing=packing, batch_size=3, group_by_length=False)
    single = list(iterate_batches(data, settings, 0, epochs=1))
    ranks = [list(iterate_batches(data, settings, 0, epochs=1, share=(rank, 4))) for rank in range(4)]
    assert all(len(batches) == len(single) for batches in ranks)  # every rank takes the same passes
    for index, batch in enumerate(single):
        shares = [batches[index] for batches in ranks]
        assert sum((share.example_numbers for share in shares), []) == batch.example_numbers
        assert sum(share.tokens for share in shares) == batch.tokens
        assert sum(share.trained_tokens for share in shares) == batch.trained_tokens
        assert {share.next_position for share in shares} == {batch.next_position}
    placeholder = ranks[3][0]  # 3 examples over 4 ranks: rank 3's share is empty
    assert placeholder.example_numbers == [] and placeholder.tokens == 0 and placeholder.trained_tokens == 0
    assert placeholder.input_ids.shape == (1, 1)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_base_model(str(tiny_llama_dir))


def test_ranks_share_pair_batches_by_whole_pairs_and_an_empty_share_scores_nothing(tiny):
    answers = examples(10)
    pairs = [RenderedPair(i + 1, answers[2 * i], answers[2 * i + 1]) for i in range(5)]
    settings = BatchSettings(batch_size=3)
    single = list(iterate_pair_batches(pairs, settings, 0, epochs=1))
    ranks = [list(iterate_pair_batches(pairs, settings, 0, epochs=1, share=(rank, 4))) for rank in range(4)]
    for index, batch in enumerate(single):
        shares = [batches[index] for batches in ranks]
        assert sum((share.example_numbers for share in shares), []) == batch.example_numbers
        for share in shares:  # chosen 2i and rejected 2i + 1 of the same pair, on the same rank
            assert [number + 1 for number in share.example_numbers[0::2]] == share.example_numbers[1::2]
    assert [[pair_count(batches[index]) for batches in ranks] for index in range(2)] == [[1, 1, 1, 0], [1, 1, 0, 0]]
    for method in ("dpo", "orpo"):
        loss, metrics = PreferenceObjective(method).batch_loss(tiny.model, ranks[3][0])
        assert float(loss) == 0.0 and set(metrics.values()) == {0.0}


def memory(tiny, **settings):
    config = TrainConfig(base=tiny.facts.source, dataset=str(DATES), max_len=64, batch_size=8, dtype="fp32",
                         **settings)
    return preflight_on(tiny, config, timed=False).memory


def test_the_memory_estimate_is_per_device_and_follows_the_strategy(tiny):
    one, ddp, fsdp = memory(tiny), memory(tiny, nproc=2), memory(tiny, nproc=2, strategy="fsdp")
    assert ddp.weights_mb == one.weights_mb > fsdp.weights_mb  # ddp replicates the base, fsdp shards its layers
    assert ddp.activations_mb == pytest.approx(one.activations_mb / 2)  # each takes half of a micro-batch
    assert ddp.processes == 2 and ddp.device_peak_mb == pytest.approx(2 * ddp.peak_mb)  # one CPU's RAM for both
    assert fsdp.device_peak_mb < ddp.device_peak_mb


def test_a_plan_of_several_processes_that_will_not_fit_is_refused(tiny, monkeypatch):
    monkeypatch.setattr("core.training.preflight.machine_memory_mb", lambda device: (600.0, 2000.0))
    assert memory(tiny).fits  # one process (about 410 MB, most of it the runtime) fits in 600 MB; four do not
    with pytest.raises(ConfigError, match="4 processes of 4.. MB each.*fewer processes.*--strategy fsdp"):
        memory(tiny, nproc=4)


@pytest.mark.parametrize("nodes, problem", [
    (Nodes(2, 2, "127.0.0.1:29500"), "number the machines 0 to 1"),
    (Nodes(2, 1, None), "--rdzv-endpoint is None"),
    (Nodes(2, 0, "no-port"), "node 0's address and a free port"),
])
def test_bad_node_flags_are_refused_with_the_fix(nodes, problem):
    with pytest.raises(RanksFailed, match=problem):
        nodes.check()


def test_strategy_and_process_count_are_checked():
    with pytest.raises(ConfigError, match="strategy is 'zero3'; choose one of: ddp, fsdp"):
        TrainConfig(dataset=str(DATES), strategy="zero3").check()
    with pytest.raises(ConfigError, match="nproc is 0"):
        TrainConfig(dataset=str(DATES), nproc=0).check()


def test_the_train_form_holds_processes_and_strategy_and_the_runs_tab_shows_each_rank(tmp_path):
    config = TrainConfig(dataset=str(DATES), nproc=2, strategy="fsdp")
    values = form_values(config)
    assert values["nproc"] == 2 and values["strategy"] == "fsdp"
    assert to_config({**values, "base": "default", "dataset": str(DATES)}) == config
    assert process_choices()[0] == 1 and default_processes() == (torch.cuda.device_count() or 1)

    rows = [{"step": 1, "split": "train", "world_size": 2, "rank_memory_mb": [512.4, 498.0], "allreduce_bytes": 7168},
            {"step": 1, "split": "eval", "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = world_line({"run_dir": str(tmp_path), "config": {"strategy": "fsdp"}})
    assert line == ("**2 processes** (fsdp) · peak memory rank 0 512 MB · rank 1 498 MB · "
                    "7.0 KB of adapter gradients all-reduced per step")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    assert world_line({"run_dir": str(tmp_path), "config": {}}) is None  # a single process says nothing of ranks


def test_ranks_after_the_first_draw_dropout_of_their_own_and_the_same_after_a_resume():
    model = torch.nn.Module()
    model.base_model = torch.nn.Linear(2, 2)
    first, second = Replicas(model, World(0, 2), "ddp"), Replicas(model, World(1, 2), "ddp")

    def draw(replicas, step):
        with replicas.own_randomness(seed=3, step=step):
            return torch.rand(4)

    torch.manual_seed(0)
    stream = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(draw(first, 5), stream)  # rank 0 draws from the run's own stream (its checkpoint's state)
    torch.manual_seed(0)
    assert not torch.equal(draw(second, 5), stream)  # rank 1 does not repeat rank 0's masks
    assert torch.equal(torch.rand(4), stream)  # and leaves the run's stream where it was
    assert torch.equal(draw(second, 5), draw(second, 5)) and not torch.equal(draw(second, 5), draw(second, 6))
