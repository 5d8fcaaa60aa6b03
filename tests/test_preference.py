"""DPO and ORPO: the losses against hand-computed values, the reference pass against a separate base copy, runs
that write the preference metrics and resume exactly, and preference datasets checked row by row."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.data import BatchSettings, DatasetError
from core.data.preference import iterate_pair_batches, prepare_preferences
from core.lora.model import LoraSettings, add_adapter
from core.models.packed_attention import use_packed_attention
from core.training.config import ConfigError, TrainConfig
from core.training.loop import train
from core.training.preference import PreferenceObjective, answer_log_probs, reference_log_probs
from tests.lora_helpers import randomize

COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "gold"]


def write_pairs(path: Path, count: int = 24) -> str:
    """Pairs whose chosen answer is a fixed, polite form and whose rejected one is curt; every prompt shares a
    system turn, so chosen and rejected (and neighbouring pairs) share opening tokens."""
    rows = []
    for i in range(count):
        colour = COLOURS[i % len(COLOURS)]
        prompt = [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": f"What colour is item {i}?"}]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"It is {colour}, thank you!"}],
                     "rejected": f"{colour}." if i % 2 else [{"role": "assistant", "content": f"{colour}."}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pair_config(model_dir, dataset: str, **overrides) -> TrainConfig:
    settings = dict(base=str(model_dir), dataset=dataset, method="dpo", eval_share=0.25, max_steps=4, batch_size=3,
                    lr=5e-3, save_every=2, eval_every=2, dropout=0.0, targets="all-linear", max_len=96,
                    sample_max_new_tokens=4, dtype="fp32")
    return TrainConfig(**{**settings, **overrides})


def sequence_log_probs(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """log p(answer tokens | prompt), the slow obvious way: full logits of the whole rendered conversation."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    through = tokenizer.apply_chat_template(messages, tokenize=False)
    answer_text = through[len(before):].rstrip()  # ends with <|im_end|>: the trained end-of-turn token
    prompt_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    picked = log_probs.gather(1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1:].sum())


@pytest.fixture
def adapted(tiny_llama_dir):
    return adapted_models(tiny_llama_dir)


def adapted_models(model_dir):
    """The tiny Llama with a LoRA adapter whose A and B are random (so policy and reference differ), a separate copy
    of the base with no adapter at all, and the tokenizer."""
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for model in (policy, base):
        use_packed_attention(model)  # the attention that lets a packed row's answers share their prompt
    add_adapter(policy, "default", LoraSettings(r=4, alpha=8, targets="all-linear"))
    randomize(policy, "default", std=0.3)
    return policy, base, AutoTokenizer.from_pretrained(model_dir)


def test_dpo_and_orpo_losses_match_hand_computed_values(adapted, tmp_path):
    policy, base, tokenizer = adapted
    data = prepare_preferences(write_pairs(tmp_path / "p.jsonl", 4), tokenizer, max_length=96)
    batch = next(iterate_pair_batches(data.examples, BatchSettings(batch_size=4, share_prefix=False), 0, epochs=1))
    order = [data.examples.index(pair) for pair in _pairs_in(batch, data.examples)]
    by_hand = []
    for i in order:
        source = data.sources[i]
        by_hand.append([sequence_log_probs(model, tokenizer, list(source.prompt), answer)
                        for model in (policy, base) for answer in (source.chosen, source.rejected)])
    beta, lam = 0.1, 0.25
    dpo = [-math.log(1 / (1 + math.exp(-beta * ((pc - rc) - (pr - rr))))) for pc, pr, rc, rr in by_hand]
    got, metrics = PreferenceObjective("dpo", beta=beta).batch_loss(policy, batch)
    assert float(got.detach()) == pytest.approx(sum(dpo), rel=1e-5)
    margins = [beta * ((pc - rc) - (pr - rr)) for pc, pr, rc, rr in by_hand]
    assert metrics["reward_margin"] == pytest.approx(sum(margins), rel=1e-4)
    assert metrics["preference_accuracy"] == sum(m > 0 for m in margins)

    _, counts = answer_log_probs(policy, batch)
    orpo = []
    for (pc, pr, _, _), nc, nr in zip(by_hand, counts[0::2].tolist(), counts[1::2].tolist()):
        c, r = pc / nc, pr / nr
        log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        orpo.append(-c - lam * math.log(1 / (1 + math.exp(-log_odds))))
    got, _ = PreferenceObjective("orpo", orpo_lambda=lam).batch_loss(policy, batch)
    assert float(got.detach()) == pytest.approx(sum(orpo), rel=1e-5)


def _pairs_in(batch, pairs):
    """The pairs of a batch in collated order, found by their chosen answer's token ids."""
    ids = batch.input_ids[0].tolist()
    bounds = batch.boundaries.tolist()
    segments = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
    chosen = [segments[batch.segment_examples.index(2 * i)] for i in range(len(segments) // 2)]
    return [next(p for p in pairs if p.chosen.input_ids == c) for c in chosen]


def test_the_reference_pass_with_the_adapter_off_equals_a_separate_base_copy(adapted, tmp_path):
    policy, base, tokenizer = adapted
    data = prepare_preferences(write_pairs(tmp_path / "p.jsonl", 6), tokenizer, max_length=96)
    settings = BatchSettings(batch_size=3, share_prefix=True)
    for batch in iterate_pair_batches(data.examples, settings, 0, epochs=1):
        with_adapter_off = reference_log_probs(policy, batch)
        separate_copy, _ = answer_log_probs(base, batch)
        policy_own, _ = answer_log_probs(policy, batch)
        torch.testing.assert_close(with_adapter_off, separate_copy, rtol=1e-5, atol=1e-5)
        assert (policy_own - separate_copy).abs().max() > 1e-2  # the adapter is back on afterwards


def test_a_dpo_run_logs_preference_metrics_and_learns_the_pairs(tiny_llama_dir, tmp_path):
    dataset = write_pairs(tmp_path / "pairs.jsonl")
    result = train(pair_config(tiny_llama_dir, dataset, max_steps=8, eval_every=4, save_every=4), tmp_path / "run")
    assert result.status == "completed" and result.steps == 8
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["split"] == "eval"]
    assert [row["step"] for row in evals] == [0, 4, 8]
    assert evals[0]["loss"] == pytest.approx(math.log(2)) and evals[0]["preference_accuracy"] == 0.5
    assert evals[-1]["loss"] < math.log(2) and evals[-1]["reward_margin"] > 0
    for row in rows:
        if row["split"] == "train":
            assert row["reward_margin"] == pytest.approx(row["reward_chosen"] - row["reward_rejected"])


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_preference_run_resumed_from_a_checkpoint_ends_with_the_same_adapter(tiny_llama_dir, tmp_path, method):
    config = pair_config(tiny_llama_dir, write_pairs(tmp_path / "pairs.jsonl"), method=method, max_steps=6,
                         keep_checkpoints=3, eval_every=3, dropout=0.1)
    whole = train(config, tmp_path / "whole")
    expected = load_file(Path(whole.adapter_dir) / "adapter_model.safetensors")
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")  # as if it had stopped after its step-2 checkpoint
    for later in ("step-000004", "step-000006"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / later)
    shutil.rmtree(tmp_path / "resumed" / "adapter")
    events = []
    resumed = train(config, tmp_path / "resumed", resume=True, events=lambda kind, payload: events.append(kind))
    assert (resumed.status, resumed.steps) == ("completed", 6)
    assert events.count("resumed") == 1 and events.count("checkpoint") == 2  # steps 4 and 6 only
    got = load_file(Path(resumed.adapter_dir) / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)
    assert resumed.train_loss == whole.train_loss and resumed.eval_loss == whole.eval_loss


def test_bad_preference_rows_are_refused_each_by_its_line(tiny_llama_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    good = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
    rows = [good, {**good, "rejected": " Hi there! "}, {**good, "rejected": "  "}, {"prompt": "x", "rejected": "y"},
            {**good, "prompt": "word " * 200}, "not json", {**good, "chosen": [{"role": "user", "content": "Hi"}]},
            {"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}],
             "rejected": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "C"}]}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    with pytest.raises(DatasetError) as refused:
        prepare_preferences(path, tokenizer, max_length=64)
    message = str(refused.value)
    assert "prefs.jsonl: 6 of 8 rows are invalid" in message
    for line, problem in [(2, "'chosen' and 'rejected' are the same answer"), (3, "field 'rejected' is empty"),
                          (4, "missing field 'chosen'"), (5, "the prompt alone fills max length 64 tokens"),
                          (6, "bad JSON"), (7, "field 'chosen' must hold one assistant answer")]:
        assert f"line {line}: {problem}" in message
    kept = prepare_preferences(path, tokenizer, max_length=64, skip_invalid=True)
    assert [pair.number for pair in kept.sources] == [1, 8]  # line 8: the implicit-prompt form
    assert kept.sources[1].prompt == ({"role": "user", "content": "A"},) and kept.sources[1].rejected == "C"


def test_a_preference_method_needs_answers_only_and_sane_strengths():
    with pytest.raises(ConfigError, match="method is 'ppo'; choose one of: sft, dpo, orpo"):
        TrainConfig(dataset="x", method="ppo").check()
    with pytest.raises(ConfigError, match="trains on answers only"):
        TrainConfig(dataset="x", method="dpo", train_on="all").check()
    with pytest.raises(ConfigError, match="beta is 0.0"):
        TrainConfig(dataset="x", method="dpo", beta=0.0).check()


def test_dpo_on_a_4bit_base_references_the_quantized_base(tiny_llama_dir, tmp_path):
    """QLoRA: the reference pass runs the nf4 base with the adapter off, so the run starts at exactly log 2."""
    config = pair_config(tiny_llama_dir, write_pairs(tmp_path / "pairs.jsonl"), quant="nf4", dtype="auto",
                         max_steps=4, eval_every=4, save_every=4)
    result = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.status == "completed" and rows[0]["split"] == "eval"
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[0]["preference_accuracy"] == 0.5
    assert rows[-1]["split"] == "eval" and rows[-1]["loss"] < math.log(2) and rows[-1]["reward_margin"] > 0
