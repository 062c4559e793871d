"""Tiny random-weight transformers causal LMs, built offline from configs and seeded.

Each config is a real architecture (Llama, Qwen2, Qwen3, Mistral) shrunk so a zoo
file stays far under 1 MiB: hidden 64, 2 layers, vocab = the shipped tokenizer's.
Weights are drawn with the project's RNG (never torch's initialisers, which move with
the CPU's kernels): every matrix and bias ``N(0, initializer_range)``, every RMSNorm
weight ``1 + N(0, initializer_range)``. ``initializer_range`` is raised above the default
so random logits are peaked enough for greedy parity to be meaningful (no near-ties at
float32 noise level).
"""

from __future__ import annotations

from generator.errors import UsageError
from generator.torch_reference import norm_centre, seeded_model
from proposals.text_pipeline.tokenizer import VOCAB_SIZE

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA: two query heads per KV head
    "head_dim": 16,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
    "eos_token_id": 0,
    "pad_token_id": 1,
    "bos_token_id": None,
    "tie_word_embeddings": False,
}

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),  # per-head q/k RMSNorm
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 16}),
}
SEEDS = {"llama": 1, "qwen2": 2, "qwen3": 3, "mistral": 4}

# MoE decoders: every layer's MLP is a block of routed experts (the MoE proposal's op).
# Experts are small so a zoo file stays under 1 MiB: 8 x 32 (Qwen3-MoE), 4 x 64 (Mixtral).
MOE_ARCHITECTURES = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True},
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {"intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
}
ARCHITECTURES.update(MOE_ARCHITECTURES)
SEEDS.update({"qwen3_moe": 21, "mixtral": 22})


def tiny_config(arch: str, **overrides):
    """The transformers config of a tiny ``arch`` model (overrides win)."""
    import transformers

    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    config_cls, _, extra = ARCHITECTURES[arch]
    return getattr(transformers, config_cls)(**{**TINY, **extra, **overrides})


def tiny_model(arch: str, **overrides):
    """A seeded tiny random ``arch`` causal LM in eval mode (eager attention, float32)."""
    import transformers

    config = tiny_config(arch, **overrides)
    config._attn_implementation = "eager"
    if arch in MOE_ARCHITECTURES:  # the per-expert loop: grouped_mm has no float64 kernel
        config._experts_implementation = "eager"
    model_cls = getattr(transformers, ARCHITECTURES[arch][1])
    return seeded_model(lambda: model_cls(config), SEEDS[arch], config.initializer_range, centre=norm_centre)
