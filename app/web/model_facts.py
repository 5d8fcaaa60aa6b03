"""One line about the served base model, shown in the page header and the Train tab."""

from core.models.loading import ModelFacts


def describe_model(facts: ModelFacts) -> str:
    size_mb = facts.weight_bytes / 2**20
    quantized = "" if facts.quantization == "none" else f", {facts.quantization}"
    return (
        f"**Base model:** {facts.name} · {facts.parameters / 1e6:.1f} M parameters · "
        f"{size_mb:,.0f} MB of weights ({facts.dtype}{quantized}) · on {facts.device}"
    )
