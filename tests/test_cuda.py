"""The CUDA paths on a tiny random Llama: bf16 autocast training, nf4 QLoRA, bitsandbytes' optimizers,
per-example attention on the GPU's kernels (with a shared prefix too), and an adapter trained there reloading to
the same outputs.

CI has no GPU, so these skip there; on a machine with one, `pytest tests/test_cuda.py` runs them.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from core.data import BatchSettings, iterate_batches
from core.lora.peft_format import load_adapter
from core.models.loading import load_base_model
from core.models.packed_attention import use_packed_attention
from core.training.config import TrainConfig
from core.training.loop import train
from core.training.loss import trained_token_loss
from tests.test_data_batch import make_examples
from tests.test_shared_prefix import with_prefix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DATES = str(Path(__file__).resolve().parents[1] / "assets/samples/dates.train.jsonl")


@pytest.mark.parametrize("quant, optimizer", [("none", "adamw"), ("nf4", "adamw"), ("none", "adamw8bit"),
                                              ("nf4", "paged_adamw")])
def test_training_on_the_gpu_learns_reports_gpu_memory_and_resumes(tiny_llama_dir, tmp_path, quant, optimizer):
    config = TrainConfig(base=str(tiny_llama_dir), dataset=DATES, eval_share=0.05, max_steps=20, batch_size=8,
                         lr=2e-2, targets="all-linear", max_len=128, quant=quant, optimizer=optimizer, device="cuda",
                         save_every=10, eval_every=10, sample_max_new_tokens=4)
    torch.cuda.reset_peak_memory_stats()
    result = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["split"] == "train"]
    assert result.status == "completed" and all(math.isfinite(loss) for loss in losses)
    assert max(losses[-3:]) < losses[0] - 0.2  # on the CPU in fp32: 6.02 -> 5.60..5.70
    assert result.peak_mem_mb == pytest.approx(torch.cuda.max_memory_allocated() / 2**20)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000020")  # resume from step 10: the optimizer state reloads
    assert train(config, tmp_path / "run", resume=True).steps == 20


def test_an_adapter_trained_on_the_gpu_gives_the_same_outputs_on_the_cpu(tiny_llama_dir, tmp_path):
    config = TrainConfig(base=str(tiny_llama_dir), dataset=DATES, eval_share=0, max_steps=6, batch_size=8, lr=5e-3,
                         targets="all-linear", max_len=128, device="cuda", dtype="fp32", save_every=6,
                         sample_max_new_tokens=4)
    adapter = train(config, tmp_path / "run").adapter_dir
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 31]])
    logits = {}
    for device in ("cuda", "cpu"):
        loaded = load_base_model(str(tiny_llama_dir), dtype="fp32", device=device)
        load_adapter(loaded.model, adapter)
        with torch.no_grad():
            logits[device] = loaded.model(input_ids=ids.to(device)).logits.cpu()
    torch.testing.assert_close(logits["cuda"], logits["cpu"], atol=1e-3, rtol=1e-3)
    base = load_base_model(str(tiny_llama_dir), dtype="fp32", device="cpu").model
    with torch.no_grad():
        assert (base(input_ids=ids).logits - logits["cpu"]).abs().max() > 1e-2  # the adapter did change the model


def test_per_example_attention_on_the_gpu_equals_each_example_alone(tiny_llama_dir):
    model = load_base_model(str(tiny_llama_dir), dtype="bf16", device="cuda").model
    use_packed_attention(model)
    examples = make_examples([40, 64, 17, 33])
    batch = next(iterate_batches(examples, BatchSettings(packing=True, batch_size=4), pad_token_id=0))
    with torch.no_grad():
        packed = model(**batch.model_inputs("cuda")).logits[0].float()
        alone = torch.cat([model(input_ids=torch.tensor([examples[n - 1].input_ids], device="cuda")).logits[0].float()
                           for n in batch.example_numbers])
        torch.testing.assert_close(packed, alone, atol=2e-2, rtol=2e-2)
        loss, count = trained_token_loss(model, batch.model_inputs("cuda"))
    assert count == sum(sum(label != -100 for label in e.labels[1:]) for e in examples) and math.isfinite(float(loss))


def test_a_shared_prefix_on_the_gpu_gives_each_example_its_own_logits(tiny_llama_dir):
    model = load_base_model(str(tiny_llama_dir), dtype="bf16", device="cuda").model
    use_packed_attention(model)
    examples = with_prefix(list(range(20, 45)), [40, 64, 17, 33])
    batch = next(iterate_batches(examples, BatchSettings(batch_size=4, share_prefix=True), pad_token_id=0))
    assert batch.segment_prefixes == (-1, 0, 0, 0, 0)
    with torch.no_grad():
        row = model(**batch.model_inputs("cuda")).logits[0].float()
        alone = torch.cat([
            model(input_ids=torch.tensor([examples[n - 1].input_ids], device="cuda")).logits[0, 25:].float()
            for n in batch.example_numbers
        ])
        torch.testing.assert_close(row[25:], alone, atol=2e-2, rtol=2e-2)
