"""TRL as an oracle: our DPO loss on a batch of pairs equals TRL's DPOTrainer loss on the same pairs, with the same
adapter loaded in PEFT (TRL's reference is also the base with the adapter disabled), and our ORPO odds-ratio term and
rewards equal its ORPOTrainer's. TRL and PEFT are test extras."""

import json

import pytest

pytest.importorskip("peft")
trl = pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from core.data import BatchSettings  # noqa: E402
from core.data.preference import iterate_pair_batches, prepare_preferences  # noqa: E402
from core.lora.peft_format import save_adapter  # noqa: E402
from core.training.preference import PreferenceObjective, answer_log_probs, pair_count  # noqa: E402
from tests.test_preference import adapted_models, write_pairs  # noqa: E402

# ChatML without the newline after the last turn's end: TRL counts whatever the template writes after the answer
# as part of it (ChatML's "\n" after <|im_end|>), where we stop at the end-of-turn token the model generates last.
# With nothing after it, both score the same tokens.
NO_TRAILING_TEXT = ("{% for m in messages %}{% if not loop.first %}{{ '\n' }}{% endif %}"
                    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '\n<|im_start|>assistant\n' }}{% endif %}")


def trl_rows(dataset: str) -> list[dict]:
    """The pairs file as TRL reads it: every side a list of messages (ours also takes a rejected answer as text)."""
    rows = [json.loads(line) for line in open(dataset)]
    return [{**row, "rejected": row["rejected"] if isinstance(row["rejected"], list)
             else [{"role": "assistant", "content": row["rejected"]}]} for row in rows]


def test_our_dpo_loss_equals_trls_on_the_same_pairs(tiny_llama_dir, tmp_path):
    policy, _, tokenizer = adapted_models(tiny_llama_dir)
    tokenizer.chat_template = NO_TRAILING_TEXT
    dataset = write_pairs(tmp_path / "pairs.jsonl", 6)
    data = prepare_preferences(dataset, tokenizer, max_length=96)
    [batch] = iterate_pair_batches(data.examples, BatchSettings(batch_size=6), 0, epochs=1)
    loss, metrics = PreferenceObjective("dpo", beta=0.1).batch_loss(policy, batch)
    ours = float(loss.detach()) / pair_count(batch)

    folder = save_adapter(policy, "default", tmp_path / "adapter")
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=6, beta=0.1, report_to=[],
                         use_cpu=True, max_length=96, gradient_checkpointing=False, bf16=False)
    # a new adapter (so TRL's reference is the base with it disabled, as ours), then given our adapter's weights
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                             args=args, train_dataset=Dataset.from_list(trl_rows(dataset)),
                             processing_class=tokenizer,
                             peft_config=LoraConfig.from_pretrained(folder))
    theirs = trainer.model
    loaded = set_peft_model_state_dict(theirs, load_file(folder / "adapter_model.safetensors"))
    assert not loaded.unexpected_keys
    inputs = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(theirs, inputs))
    assert ours == pytest.approx(trl_loss, rel=1e-4)
    assert metrics["preference_accuracy"] / 6 == pytest.approx(
        trainer._metrics["train"]["rewards/accuracies"][-1], abs=1e-6)


def test_our_orpo_odds_ratio_term_and_rewards_equal_trls_on_the_same_pairs(tiny_llama_dir, tmp_path):
    """TRL's ORPOTrainer (trl.experimental.orpo) has the same odds ratio and rewards (lambda x mean answer log-prob),
    but its NLL term covers the chosen sequence's prompt tokens too, where ours covers the answer's own, as the loss
    our DPO and SFT train. So the odds-ratio term is compared: our loss less our NLL term."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    policy, _, tokenizer = adapted_models(tiny_llama_dir)
    tokenizer.chat_template = NO_TRAILING_TEXT
    dataset = write_pairs(tmp_path / "pairs.jsonl", 6)
    data = prepare_preferences(dataset, tokenizer, max_length=96)
    [batch] = iterate_pair_batches(data.examples, BatchSettings(batch_size=6), 0, epochs=1)
    with torch.no_grad():
        loss, metrics = PreferenceObjective("orpo", orpo_lambda=0.1).batch_loss(policy, batch)
        sums, counts = answer_log_probs(policy, batch)
    odds_ratio_term = float(loss) / 6 + float((sums[0::2] / counts[0::2]).mean())  # less the mean chosen NLL

    folder = save_adapter(policy, "default", tmp_path / "adapter")
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=6, beta=0.1, report_to=[],
                      use_cpu=True, max_length=96, bf16=False)
    trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), args=args,
                          train_dataset=Dataset.from_list(trl_rows(dataset)), processing_class=tokenizer,
                          peft_config=LoraConfig.from_pretrained(folder))
    theirs = trainer.model
    assert not set_peft_model_state_dict(theirs, load_file(folder / "adapter_model.safetensors")).unexpected_keys
    with torch.no_grad():
        chosen, rejected = trainer.concatenated_forward(theirs, next(iter(trainer.get_train_dataloader())))[:2]
        terms, chosen_rewards, rejected_rewards = trainer.odds_ratio_loss(chosen, rejected)[:3]
    assert odds_ratio_term == pytest.approx(-float(terms.mean()), rel=1e-4)
    assert metrics["reward_chosen"] / 6 == pytest.approx(float(chosen_rewards.mean()), rel=1e-4)
    assert metrics["reward_rejected"] / 6 == pytest.approx(float(rejected_rewards.mean()), rel=1e-4)
    won = (chosen_rewards > rejected_rewards).float().mean()
    assert metrics["preference_accuracy"] / 6 == pytest.approx(float(won))
