"""The useful FLOPs of a LoRA training step: MFU's numerator, the same for every system that trains the examples.

Counted: the forward and input-gradient passes through the frozen linear layers of the decoder (4 x their
weights per token; frozen weights need no weight gradient), LoRA's forward and backward (6 x its parameters
per token), causal attention within each example (no cross-example or padding work), and the LM head only
where a token is trained (4 x vocab x hidden). Work a system does beyond that (padding, the LM head on prompt
tokens, recomputation) is its own cost and is not counted.
"""


def decoder_linear_weights(config) -> int:
    """Weights of the decoder layers' linear projections for a Llama-style config (q, k, v, o and a gated MLP)."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * config.num_key_value_heads)
    return config.num_hidden_layers * (attention + 3 * hidden * config.intermediate_size)


def lora_step_flops(config, lora_parameters: int, lengths: list[int], trained_tokens: int) -> float:
    """FLOPs a LoRA step must do for examples of these token `lengths` with `trained_tokens` loss positions."""
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = sum(6 * heads * head_dim * layers * length * (length + 1) for length in lengths)
    linear = (4 * decoder_linear_weights(config) + 6 * lora_parameters) * sum(lengths)
    return linear + attention + 4 * config.vocab_size * config.hidden_size * trained_tokens


def prefix_flops_saved(config, lora_parameters: int, prefixes: list[tuple[int, int]]) -> float:
    """The FLOPs of `lora_step_flops` not done when each group of examples, given as (examples, shared prefix
    tokens), computes its shared prefix once. An example's causal pairs are the prefix's own, prefix x rest,
    and the rest's, so the work skipped per example but one is that of the prefix alone, with no loss."""
    return sum((examples - 1) * lora_step_flops(config, lora_parameters, [prefix], 0) for examples, prefix in prefixes)
