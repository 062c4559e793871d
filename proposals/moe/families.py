"""Tiny random-weight transformers MoE blocks, built offline from configs (seeded)."""

from __future__ import annotations

import importlib

import numpy as np

from generator.errors import UsageError
from generator.torch_reference import float64_copy, float64_mode, load_seeded, norm_centre, seeded_model

# family -> (module, config class, block class, config fields). Sizes are tiny on purpose.
_COMMON = {"hidden_size": 16, "hidden_act": "silu"}
TINY = {
    "mixtral": (
        "mixtral",
        "MixtralConfig",
        "MixtralSparseMoeBlock",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen2_moe": (
        "qwen2_moe",
        "Qwen2MoeConfig",
        "Qwen2MoeSparseMoeBlock",
        {
            "moe_intermediate_size": 12,
            "shared_expert_intermediate_size": 20,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "norm_topk_prob": False,
        },
    ),
    "qwen3_moe": (
        "qwen3_moe",
        "Qwen3MoeConfig",
        "Qwen3MoeSparseMoeBlock",
        {"moe_intermediate_size": 12, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True},
    ),
    "deepseek_v3": (
        "deepseek_v3",
        "DeepseekV3Config",
        "DeepseekV3MoE",
        {
            "moe_intermediate_size": 12,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 4,
            "topk_group": 2,
            "n_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
        },
    ),
    "gpt_oss": (
        "gpt_oss",
        "GptOssConfig",
        "GptOssMLP",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "llama4": (
        "llama4",
        "Llama4TextConfig",
        "Llama4TextMoe",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 1},
    ),
    "olmoe": (
        "olmoe",
        "OlmoeConfig",
        "OlmoeSparseMoeBlock",
        {"intermediate_size": 12, "num_experts": 6, "num_experts_per_tok": 3, "norm_topk_prob": False},
    ),
    "qwen3_next": (
        "qwen3_next",
        "Qwen3NextConfig",
        "Qwen3NextSparseMoeBlock",
        {
            "moe_intermediate_size": 12,
            "shared_expert_intermediate_size": 8,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
        },
    ),
    "deepseek_v2": (
        "deepseek_v2",
        "DeepseekV2Config",
        "DeepseekV2Moe",
        {
            "moe_intermediate_size": 12,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 4,
            "topk_group": 2,
            "n_shared_experts": 2,
            "topk_method": "group_limited_greedy",
            "routed_scaling_factor": 1.5,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
    ),
    "glm4_moe": (
        "glm4_moe",
        "Glm4MoeConfig",
        "Glm4MoeMoE",
        {
            "moe_intermediate_size": 12,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 2,
            "topk_group": 1,
            "n_shared_experts": 1,
            "routed_scaling_factor": 1.8,
            "norm_topk_prob": True,
        },
    ),
    "minimax_m2": (
        "minimax_m2",
        "MiniMaxM2Config",
        "MiniMaxM2SparseMoeBlock",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "dots1": (
        "dots1",
        "Dots1Config",
        "Dots1MoE",
        {
            "moe_intermediate_size": 12,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 2,
            "topk_group": 1,
            "n_shared_experts": 1,
            "routed_scaling_factor": 1.5,
            "norm_topk_prob": True,
        },
    ),
    "ernie4_5_moe": (
        "ernie4_5_moe",
        "Ernie4_5_MoeConfig",
        "Ernie4_5_MoeSparseMoeBlock",
        {
            "moe_intermediate_size": 12,
            "moe_num_experts": 6,
            "moe_k": 2,
            "moe_num_shared_experts": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
    ),
    "flex_olmo": (
        "flex_olmo",
        "FlexOlmoConfig",
        "FlexOlmoSparseMoeBlock",
        {"intermediate_size": 12, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True},
    ),
    "jamba": (
        "jamba",
        "JambaConfig",
        "JambaSparseMoeBlock",
        {"intermediate_size": 12, "num_experts": 4, "num_experts_per_tok": 2},
    ),
    "phimoe": (
        "phimoe",
        "PhimoeConfig",
        "PhimoeSparseMoeBlock",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
}
SUPPORTED = tuple(f for f in TINY if f != "phimoe")


def tiny_config(family: str):
    if family not in TINY:
        raise UsageError(f"unknown MoE family {family!r}; valid: {sorted(TINY)}")
    module, config_cls, _, fields = TINY[family]
    mod = importlib.import_module(f"transformers.models.{module}.configuration_{module}")
    config = getattr(mod, config_cls)(**_COMMON, **fields)
    config._experts_implementation = "eager"  # the per-expert loop; a standalone block has none
    return config


def tiny_block(family: str, seed: int = 0):
    """The family's MoE block with seeded random weights (every parameter and buffer,
    ``0.5 * N(0, 1)`` from the project's RNG, not torch's)."""
    config = tiny_config(family)
    module, _, block_cls, _ = TINY[family]
    mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    return load_seeded(getattr(mod, block_cls)(config).eval(), seed, 0.5)


def block_output(block, hidden_states):
    """The block's hidden-states output, shaped like its input. GPT-OSS and Llama 4 also
    return router tensors; Llama 4 returns the tokens flattened to [T, H]."""
    import torch

    with torch.no_grad():
        out = block(torch.from_numpy(hidden_states))
    out = out[0] if isinstance(out, tuple) else out
    return out.numpy().reshape(hidden_states.shape)


def reference_output(block, hidden_states):
    """:func:`block_output` computed in float64 (a float64 copy of the block, float64
    inputs), cast once to the input's dtype: the zoo's portable expected output."""
    import torch

    block64 = float64_copy(block)
    with float64_mode():
        out = block64(torch.from_numpy(hidden_states.astype(np.float64)))
    out = out[0] if isinstance(out, tuple) else out
    return out.numpy().reshape(hidden_states.shape).astype(hidden_states.dtype)


# Whole tiny causal LMs for the export path (two layers, both MoE).
CAUSAL_LM = {
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "intermediate_size": 24,
            "moe_intermediate_size": 12,
            "head_dim": 8,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
        },
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {"intermediate_size": 12, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": False},
    ),
    "qwen2_moe": (  # shared expert with its sigmoid gate
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            "intermediate_size": 24,
            "moe_intermediate_size": 12,
            "shared_expert_intermediate_size": 12,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        },
    ),
    "gpt_oss": (  # router bias, expert biases, interleaved clamped SwiGLU
        "GptOssConfig",
        "GptOssForCausalLM",
        {"intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8},
    ),
    "deepseek_v3": (  # MLA attention; sigmoid scores, selection-only bias, group-limited top-k, shared expert
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "intermediate_size": 24,
            "moe_intermediate_size": 12,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 4,
            "topk_group": 2,
            "n_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
            "first_k_dense_replace": 0,
            "q_lora_rank": 8,
            "kv_lora_rank": 8,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 8,
            # MLA expands its latent keys to every head; with fewer KV heads, transformers'
            # SDPA path under torch.export repeats them again (query 2 heads, key 4)
            "num_key_value_heads": 2,
        },
    ),
}


def tiny_causal_lm(family: str, seed: int = 0):
    """A two-layer causal LM of the family with seeded weights (``N(0, initializer_range)``,
    norm weights around 1) from the project's RNG."""
    import transformers

    if family not in CAUSAL_LM:
        raise UsageError(f"no tiny causal LM for {family!r}; valid: {sorted(CAUSAL_LM)}")
    config_cls, model_cls, fields = CAUSAL_LM[family]
    base = {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
    }
    config = getattr(transformers, config_cls)(**(base | fields))
    build = getattr(transformers, model_cls)
    return seeded_model(lambda: build(config), seed, config.initializer_range, centre=norm_centre)


def Logits(model):  # noqa: N802 (reads like the module it returns)
    """Wraps a causal LM so that export sees ``input_ids -> logits`` (no cache object)."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return _Logits(model).eval()
