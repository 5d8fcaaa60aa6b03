"""Export parity: does an exported model answer like the live adapter it came from?

A fixed set of chat prompts goes through the reference (base + adapters, unmerged) and through each export
reloaded from disk. For every export we report

    max_logit_diff   the largest |logit difference| over every prompt position and vocabulary entry,
                     judged against logit_scale (the largest |logit| of the live adapter) times a per-format factor
    greedy_agree     whether greedy continuations are token-for-token the same on every prompt, or part only
                     where the live adapter's two likeliest tokens were closer than the tolerance (a tie at
                     that precision, which any rounding may break either way)
    template_same    whether the export's chat template renders every prompt to the same text (and tokens)

An export passes when its template renders the same prompts, its logits stay within the format's tolerance,
and (for unquantized formats) its greedy answers agree; quantized formats and bf16 weights report greedy
agreement without requiring it, since their rounding may legitimately flip a near-tie.
"""

from dataclasses import asdict, dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from core.data.template import apply_template

Conversation = list[dict[str, str]]

PARITY_PROMPTS: tuple[Conversation, ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    (
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Give me three tips for writing clear code."},
    ),
    (
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Explain LoRA in one sentence."},
    ),
)
GREEDY_TOKENS = 16

# Largest logit difference each kind of export may show against the live fp32 adapter, as a fraction of the
# largest |logit| (fp32 reordering for merged, none for a copied adapter, f16/q8_0 weight rounding for GGUF,
# fp16/bf16 weight rounding for a merged folder stored in 16 bits: the default model shows 0.12% and 1.2%).
RELATIVE_TOLERANCES = {"merged": 1e-4, "peft": 1e-5, "f16": 0.01, "fp16": 0.01, "bf16": 0.05, "q8_0": 0.15,
                       "q6_k": 0.5, "q5_k_m": 0.75, "q4_k_m": 0.75, "q4_0": 1.0}
# The same checks run in llama.cpp, whose kernels round the activations too (to f16 for f16 weights, to 8 bits
# for quantized ones) and sum in another order per thread count: the default model shows 0.24% for f16 and 7.8%
# for q8_0 there, a tiny random model with a strong adapter up to 1% for f16 (its logits are all near 1).
LLAMA_CPP_TOLERANCES = {**RELATIVE_TOLERANCES, "f16": 0.02, "q8_0": 0.2}
# 4- to 6-bit weights move the largest logit difference far (a few logits by 20-55% of the largest one), so those
# exports are judged by the share of prompt positions whose likeliest token stays the live adapter's: the default
# model keeps 94% (q6_k), 86% (q5_k_m), 91% (q4_k_m) and 71% (q4_0) in llama.cpp. A broken layout keeps ~0%.
TOP1_MINIMUMS = {"q6_k": 0.85, "q5_k_m": 0.75, "q4_k_m": 0.75, "q4_0": 0.6}


@dataclass
class ModelOutputs:
    """What one model does with the prompt set: the rendered prompts, their tokens, logits and greedy answers."""

    rendered: list[str]
    token_ids: list[list[int]]
    logits: list[torch.Tensor]
    greedy: list[list[int]]
    margins: list[list[float]] = field(default_factory=list)  # per greedy step: likeliest minus second logit


@dataclass
class ParityCheck:
    """One export compared with the live adapter."""

    target: str
    max_logit_diff: float | None  # None when the prompts tokenize differently, so logits cannot be lined up
    logit_scale: float
    tolerance: float
    greedy_agree: bool
    greedy_matches: int  # prompts whose greedy answers agree (near-ties included)
    prompts: int
    template_same: bool
    greedy_required: bool = True
    problems: list[str] = field(default_factory=list)
    reader: str = "transformers"  # which program read the export back: transformers or llama.cpp
    top1_agreement: float | None = None  # share of prompt positions with the live adapter's likeliest token
    top1_minimum: float | None = None
    greedy_ties: int = 0  # of greedy_matches, those whose answers part at a near-tie
    notes: list[str] = field(default_factory=list)  # how the reader was helped, e.g. settings it cannot read

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class ParityReport:
    """Every check of one export; `passed` only if all of them passed."""

    checks: list[ParityCheck]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def problems(self) -> list[str]:
        return [problem for check in self.checks for problem in check.problems]

    def to_json(self) -> dict:
        """The figures stored with the export and printed by the CLI."""
        return {"passed": self.passed, "checks": [asdict(check) for check in self.checks]}


def greedy_verdict(check: dict) -> str:
    """How one check's greedy answers compared, in the words the CLI and the page both use ("" if not checked): a
    quantized export may answer differently without failing, which "DIFFER" alone would not tell."""
    agree = check.get("greedy_agree")
    if agree is None:
        return ""
    if agree:
        return "agree"
    return "differ (allowed when quantized)" if check.get("greedy_required") is False else "DIFFER"


@torch.inference_mode()
def model_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: tuple[Conversation, ...] = PARITY_PROMPTS,
    new_tokens: int = GREEDY_TOKENS,
) -> ModelOutputs:
    """Run the prompt set through `model` with its own tokenizer and chat template."""
    outputs = ModelOutputs([], [], [], [])
    greedy = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        output_scores=True, return_dict_in_generate=True,
    )
    device = next(model.parameters()).device
    for messages in prompts:
        text = apply_template(tokenizer, messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        outputs.rendered.append(text)
        outputs.token_ids.append(ids[0].tolist())
        outputs.logits.append(model(ids).logits[0].float().cpu())
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
        outputs.greedy.append(generated.sequences[0, ids.shape[1]:].tolist())
        top2 = [step[0].float().topk(2).values for step in generated.scores]
        outputs.margins.append([float(pair[0] - pair[1]) for pair in top2])
    return outputs


def compare_outputs(
    reference: ModelOutputs, candidate: ModelOutputs, target: str, relative_tolerance: float,
    greedy_required: bool = True, reader: str = "transformers", top1_minimum: float | None = None,
) -> ParityCheck:
    """Compare an export's outputs with the live adapter's, naming every difference found."""
    scale = max(float(logits.abs().max()) for logits in reference.logits)
    tolerance = relative_tolerance * max(scale, 1.0)
    template_same = reference.rendered == candidate.rendered and reference.token_ids == candidate.token_ids
    max_diff = top1 = None
    if reference.token_ids == candidate.token_ids:
        max_diff = max(float((ref - cand).abs().max()) for ref, cand in zip(reference.logits, candidate.logits))
        same = sum(int((ref.argmax(-1) == cand.argmax(-1)).sum()) for ref, cand in zip(reference.logits,
                                                                                       candidate.logits))
        top1 = same / sum(len(ref) for ref in reference.logits)
    exact = sum(ref == cand for ref, cand in zip(reference.greedy, candidate.greedy))
    ties = sum(_parts_at_a_tie(ref, cand, margins, tolerance)
               for ref, cand, margins in zip(reference.greedy, candidate.greedy, reference.margins))
    matches = exact + ties
    check = ParityCheck(
        target=target,
        max_logit_diff=max_diff,
        logit_scale=scale,
        tolerance=tolerance,
        greedy_agree=matches == len(reference.greedy),
        greedy_matches=matches,
        prompts=len(reference.greedy),
        template_same=template_same,
        greedy_required=greedy_required,
        reader=reader,
        top1_agreement=top1,
        top1_minimum=top1_minimum,
        greedy_ties=ties,
    )
    if reference.rendered != candidate.rendered:
        check.problems.append(f"{target}: the chat template was lost or changed (prompts render differently)")
    elif not template_same:
        check.problems.append(f"{target}: the tokenizer changed (the same prompt text gives different tokens)")
    if max_diff is not None and not max_diff <= tolerance:  # NaN logits fail too
        check.problems.append(f"{target}: logits differ by up to {max_diff:.3g} (tolerance {tolerance:.3g})")
    if top1_minimum is not None and top1 is not None and top1 < top1_minimum:
        check.problems.append(f"{target}: the likeliest token agrees at {top1:.0%} of prompt positions (at least "
                              f"{top1_minimum:.0%} expected for this type)")
    if greedy_required and not check.greedy_agree:
        check.problems.append(
            f"{target}: greedy answers differ on {check.prompts - matches} of {check.prompts} prompts"
        )
    return check


def _parts_at_a_tie(reference: list[int], candidate: list[int], margins: list[float], tolerance: float) -> bool:
    """Whether two different greedy answers first part where the live adapter's two likeliest tokens were within
    `tolerance` of each other."""
    if reference == candidate:
        return False
    first = next((step for step, (ref, cand) in enumerate(zip(reference, candidate)) if ref != cand),
                 min(len(reference), len(candidate)))
    return first < len(margins) and margins[first] <= tolerance
