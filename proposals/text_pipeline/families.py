"""Tiny random-weight transformers causal LMs, built offline from configs and seeded.

Each config is a real architecture (Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3,
Phi-3, OLMo-2, Granite, SmolLM3, the MoE decoders Qwen3-MoE and Mixtral, the hybrid Qwen3.5)
shrunk so a zoo file stays far under 1 MiB: hidden 64, 2 layers (the hybrid 3), vocab = the
shipped tokenizer's.
Weights are drawn with the project's RNG (never torch's initialisers, which move with
the CPU's kernels): every matrix and bias ``N(0, initializer_range)``, every RMSNorm
weight ``1 + N(0, initializer_range)`` (Gemma's norms scale by ``1 + weight``, so their
weights are ``N(0, initializer_range)``, and Qwen3.5's likewise). ``initializer_range`` is raised above the
default so random logits are peaked enough for greedy parity to be meaningful (no
near-ties at float32 noise level).
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

# Gemma 2/3: sliding layer 0 (circular buffer of 8), full layer 1 (linear buffer); a
# query_pre_attn_scalar that is not head_dim, so Attention's scale attribute shows.
# Untied embeddings (the released checkpoints tie them): tied and scaled by sqrt(hidden),
# a random model's logits peak at its input token and greedy output repeats one token.
# Gemma 2 softcaps the attention scores and the logits low enough to bite on these small
# models; Gemma 3 uses a local RoPE base on sliding layers.
GEMMA = {
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention"],
    "query_pre_attn_scalar": 24,
}
GEMMA3_ROPE = {
    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
}
# Granite's four scalars: embedding x12, residual x0.22 and logits / 8 are the magnitudes of
# Granite 3 configs; attention_multiplier replaces 1/sqrt(head_dim) (0.25 here) as the scale
GRANITE = {
    "embedding_multiplier": 12.0,
    "residual_multiplier": 0.22,
    "attention_multiplier": 0.125,
    "logits_scaling": 8.0,
}

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),  # per-head q/k RMSNorm
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 16}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        GEMMA | {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 8.0},
    ),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA | {"rope_parameters": GEMMA3_ROPE}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj and gate_up_proj
    # Phi-3 with 3/4 of each head rotated (partial_rotary_factor, as in Phi-4-mini's config)
    "phi3_partial": ("Phi3Config", "Phi3ForCausalLM", {"partial_rotary_factor": 0.75}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),  # q/k RMSNorm over the projection, post-norms
    "granite": ("GraniteConfig", "GraniteForCausalLM", GRANITE),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"no_rope_layer_interval": 2}),  # layer 1 has no RoPE
}
SEEDS = {
    "llama": 1,
    "qwen2": 2,
    "qwen3": 3,
    "mistral": 4,
    "phi3": 11,
    "phi3_partial": 15,
    "olmo2": 12,
    "granite": 13,
    "smollm3": 14,
    "gemma2": 5,
    "gemma3": 6,
}
CENTRES = {"gemma2": lambda name: 0.0, "gemma3": lambda name: 0.0}  # weights around 0: Gemma's norms add 1

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

# Hybrid decoders: gated-delta layers (LinearAttention-27, a conv and a recurrent state each)
# between attention layers. Kept out of ARCHITECTURES: their cache is not only K/V, so the
# KV-cache formats, the paged rewrite and the KV-cache report do not apply to them.
# Qwen3.5: linear, full, linear; 2 key heads serve 4 value heads, conv kernel 4; the
# attention layers gate their output and rotate a quarter of each head (partial_rotary_factor).
HYBRID_ARCHITECTURES = {
    "qwen3_5": (
        "Qwen3_5TextConfig",
        "Qwen3_5ForCausalLM",
        {
            "num_hidden_layers": 3,
            "layer_types": ["linear_attention", "full_attention", "linear_attention"],
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 4,
        },
    ),
}
# Qwen3-Next: the same layers (its mixer's q/k/v/z and b/a projections fused and grouped per
# key head), and MoE MLPs: 4 experts of 32, top 2, and a shared expert behind a sigmoid gate
HYBRID_ARCHITECTURES["qwen3_next"] = (
    "Qwen3NextConfig",
    "Qwen3NextForCausalLM",
    HYBRID_ARCHITECTURES["qwen3_5"][2]
    | {"moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2},
)
SEEDS.update({"qwen3_5": 31, "qwen3_next": 32})
# Qwen3.5's RMSNorms scale by (1 + weight) (weights around 0), but the gated norm of its
# linear-attention layers scales by weight (around 1)
CENTRES["qwen3_5"] = CENTRES["qwen3_next"] = lambda name: 1.0 if name.endswith("linear_attn.norm.weight") else 0.0
ALL_ARCHITECTURES = {**ARCHITECTURES, **HYBRID_ARCHITECTURES}  # every tiny_model


def tiny_config(arch: str, **overrides):
    """The transformers config of a tiny ``arch`` model (overrides win)."""
    import transformers

    if arch not in ALL_ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}; valid: {', '.join(ALL_ARCHITECTURES)}")
    config_cls, _, extra = ALL_ARCHITECTURES[arch]
    return getattr(transformers, config_cls)(**{**TINY, **extra, **overrides})


def tiny_model(arch: str, **overrides):
    """A seeded tiny random ``arch`` causal LM in eval mode (eager attention, float32)."""
    import transformers

    config = tiny_config(arch, **overrides)
    config._attn_implementation = "eager"
    if arch in MOE_ARCHITECTURES or arch == "qwen3_next":  # the per-expert loop: grouped_mm has no float64 kernel
        config._experts_implementation = "eager"
    model_cls = getattr(transformers, ALL_ARCHITECTURES[arch][1])
    centre = CENTRES.get(arch, norm_centre)
    return seeded_model(lambda: model_cls(config), SEEDS[arch], config.initializer_range, centre=centre)
