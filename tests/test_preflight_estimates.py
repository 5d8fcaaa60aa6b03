"""The preflight's length histogram and memory estimate: the numbers follow the settings a person can change to make
a run fit (batch size, max length, nf4, gradient checkpointing), and the pictures mark max length and the warning."""

import pytest

from app.web.train.panels import length_chart, memory_gauge
from core.data import data_preflight
from core.data.preflight import length_histogram
from core.models.loading import load_base_model
from core.training.config import TrainConfig
from core.training.preflight import count_trainable, estimate_memory, machine_memory_mb
from tests.job_helpers import DATES


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_base_model(str(tiny_llama_dir))


def estimate(tiny, **settings):
    config = TrainConfig(base=tiny.facts.source, dataset=str(DATES), **{"max_len": 64, "batch_size": 8, **settings})
    data = data_preflight(config.dataset, tiny.tokenizer, config.max_len)
    return estimate_memory(tiny, config, data, count_trainable(tiny.model, config))


def test_histogram_counts_every_example_and_the_truncated_ones():
    lengths = [52, 60, 60, 61, 70, 74]
    bins = length_histogram(lengths, max_length=64)
    assert sum(b.count for b in bins) == 6 and sum(b.truncated for b in bins) == 2  # 70 and 74 exceed 64
    assert bins[0].start == 52 and bins[-1].end > 74 and len({b.end - b.start for b in bins}) == 1
    assert length_histogram(lengths, max_length=10)[0].start == 10  # a limit below every example is in range
    assert length_histogram(lengths, max_length=4096)[-1].end <= 2 * 74  # a far limit does not squash the bars


def test_memory_follows_batch_size_max_length_nf4_and_checkpointing(tiny):
    base = estimate(tiny)
    assert estimate(tiny, batch_size=16).activations_mb == pytest.approx(2 * base.activations_mb)
    assert estimate(tiny, max_len=32).activations_mb < base.activations_mb
    assert estimate(tiny, gradient_checkpointing=True).activations_mb < base.activations_mb
    full = estimate(tiny, dtype="fp32")  # "auto" may train a bf16 base (on a CPU with bf16 products)
    assert estimate(tiny, quant="nf4").weights_mb < estimate(tiny, quant="int8").weights_mb < full.weights_mb
    assert estimate(tiny, dtype="bf16").weights_mb == pytest.approx(full.weights_mb / 2)
    # tiny Llama, q (64->64) and v (64->32) in 2 layers at r=8; 16 bytes: value, gradient, two Adam moments
    assert base.adapter_mb == pytest.approx(16 * 2 * 8 * ((64 + 64) + (64 + 32)) / 2**20)
    assert base.fits and base.available_mb <= base.device_total_mb == machine_memory_mb(tiny.model.device)[1]
    assert not estimate(tiny, batch_size=10_000_000).fits


def test_pictures_mark_max_length_and_warn_only_when_the_run_does_not_fit(tiny):
    bins = length_histogram([52, 60, 60, 61, 70, 74], max_length=64)
    chart = length_chart(bins, 64, 2 / 6)
    assert 'class="max-length"' in chart and chart.count('class="cut"') == 2 and "33% of examples" in chart
    assert "nothing is truncated" in length_chart(length_histogram([52, 74], 4096), 4096, 0.0)

    fits, too_big = memory_gauge(estimate(tiny)), memory_gauge(estimate(tiny, batch_size=10_000_000))
    assert 'data-fits="true"' in fits and "lf-warning" not in fits
    assert 'data-fits="false"' in too_big and "lf-warning" in too_big
    assert all(fix in too_big for fix in ("Batch size", "Max length", "nf4", "Gradient checkpointing"))


def test_an_estimate_for_a_served_model_leaves_it_untouched(tiny):
    before = {name: param.clone() for name, param in tiny.model.named_parameters()}
    estimate(tiny, quant="nf4", targets="all-linear", rank=16)
    after = dict(tiny.model.named_parameters())
    assert before.keys() == after.keys() and all((before[n] == after[n]).all() for n in before)
