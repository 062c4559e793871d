"""Convert a transformers Llama-family causal LM into an opset-24 ONNX decoder.

The graph follows the KV-cache pattern of ONNX's `kv_cache.md`: the cache is a static
buffer per layer, written by TensorScatter-24 at per-sample ``write_indices`` and read
whole by Attention-24 with ``nonpad_kv_seqlen`` and ``is_causal=1`` (bottom-right
aligned). One graph serves prefill (``write_indices = 0``, many tokens) and decode
(``write_indices = tokens so far``, one token). Sliding-window configs use a circular
buffer whose length is the window.

Graph signature (``L`` = cache length, fixed to the window for circular buffers)::

    input_ids      int64 [batch, seq]
    write_indices  int64 [batch]            tokens already in the cache, per sample
    past_key_i     float [batch, kv_heads, L, head_dim]   (and past_value_i)
    -> logits      float [batch, seq, vocab]
    -> present_key_i / present_value_i      same shape as past_*

Positions (``write_indices + arange(seq)``) and ``nonpad_kv_seqlen``
(``write_indices + seq``, capped at ``L`` for a circular buffer) are computed in the
graph, so a caller cannot make them disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import OpBuilder

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN, builder_model, graph_builder
from generator.torch_reference import float64_mode
from proposals.kv_cache.build import FLOAT, INT64, AttentionWeights, CacheInputs, Rope, attention_block
from proposals.text_pipeline.moe_mlp import is_moe_block, moe_mlp, retarget

OPSET = 24
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # cos/sin independent of length
CAUSAL_LM_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")
# MoE decoders: the MLP of a layer is the MoE proposal's function op (moe_mlp.py)
MOE_MODEL_TYPES = ("qwen3_moe", "mixtral")
SUPPORTED_MODEL_TYPES += MOE_MODEL_TYPES
CAUSAL_LM_CLASSES += ("Qwen3MoeForCausalLM", "MixtralForCausalLM")


# --8<-- [start:spec]
@dataclass(frozen=True)
class DecoderSpec:
    """What the runtime needs to know about a built decoder (also the zoo's pipeline config)."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    sliding_window: int | None  # circular buffer of this length when set

    @property
    def circular(self) -> bool:
        return self.sliding_window is not None

    def cache_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        """Shape of one layer's key (or value) buffer."""
        if self.circular:
            length = self.sliding_window
        return (batch, self.num_kv_heads, length, self.head_dim)


# --8<-- [end:spec]


def _config_value(config, name: str, default=None):
    return getattr(config, name, default)


def _sliding_window(config) -> int | None:
    """The window of a config whose every layer slides, None when no layer does.

    Mixed full/sliding layers (Qwen2 ``max_window_layers``, Gemma-style alternation)
    would need two cache kinds in one graph; they are rejected by name.
    """
    window = _config_value(config, "sliding_window")
    layer_types = _config_value(config, "layer_types")
    if window is None:
        return None
    if layer_types is not None:
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return None
        if kinds != {"sliding_attention"}:
            raise UsageError(
                "unsupported config feature: layer_types mixing full and sliding attention "
                f"({sorted(kinds)}); supported: all layers full or all sliding"
            )
    return int(window)


def decoder_spec(config) -> DecoderSpec:
    """Check a transformers config and describe the decoder it converts to.

    Raises UsageError naming the first unsupported architecture or feature.
    """
    model_type = _config_value(config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    act = _config_value(config, "hidden_act")
    if act != "silu":
        raise UsageError(f"unsupported config feature: hidden_act={act!r}; supported: 'silu'")
    rope = _config_value(config, "rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UsageError(
            f"unsupported config feature: rope_type={rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if (_config_value(config, "pretraining_tp") or 1) != 1:
        raise UsageError("unsupported config feature: pretraining_tp != 1; supported: 1")
    heads = config.num_attention_heads
    kv_heads = _config_value(config, "num_key_value_heads") or heads
    head_dim = _config_value(config, "head_dim") or config.hidden_size // heads
    partial = rope.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise UsageError(f"unsupported config feature: partial_rotary_factor={partial}; supported: 1.0")
    return DecoderSpec(
        model_type=model_type,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        sliding_window=_sliding_window(config),
    )


def _weight(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().astype(np.float32)


def _transposed(linear) -> np.ndarray:
    """A torch Linear's weight in the ``x @ w`` layout the graph stores."""
    return _weight(linear.weight).T


def _bias(linear) -> np.ndarray | None:
    return None if linear.bias is None else _weight(linear.bias)


def _epsilon(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rms_norm(op: OpBuilder, x: ir.Value, norm, name: str) -> ir.Value:
    weight = op.initializer(ir.tensor(_weight(norm.weight)), f"{name}.weight")
    return op.RMSNormalization(x, weight, axis=-1, epsilon=_epsilon(norm))


def _linear(op: OpBuilder, x: ir.Value, linear, name: str) -> ir.Value:
    y = op.MatMul(x, op.initializer(ir.tensor(_transposed(linear)), f"{name}.weight"))
    bias = _bias(linear)
    return y if bias is None else op.Add(y, op.initializer(ir.tensor(bias), f"{name}.bias"))


def _rope_tables(hf_model, spec: DecoderSpec) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches ``[max_positions, head_dim/2]`` computed by the model's own rotary module,
    so every static rope variant (default, linear, llama3, yarn) matches by construction.
    The module runs in float64 and the tables are cast once: a float32 cos/sin kernel
    differs per CPU, and these tables are committed zoo bytes."""
    import torch

    rotary = hf_model.model.rotary_emb
    positions = torch.arange(spec.max_positions)[None, :]
    probe = torch.zeros(1, dtype=torch.float64)
    with float64_mode():
        cos, sin = rotary(probe, positions)
    half = spec.head_dim // 2
    return _weight(cos[0, :, :half]), _weight(sin[0, :, :half])


def attention_weights(attn) -> AttentionWeights:
    """A transformers attention module's weights in the KV proposal's layer builder's form."""
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    return AttentionWeights(
        q_proj=_transposed(attn.q_proj),
        k_proj=_transposed(attn.k_proj),
        v_proj=_transposed(attn.v_proj),
        o_proj=_transposed(attn.o_proj),
        q_bias=_bias(attn.q_proj),
        k_bias=_bias(attn.k_proj),
        v_bias=_bias(attn.v_proj),
        o_bias=_bias(attn.o_proj),
        q_norm=None if q_norm is None else _weight(q_norm.weight),
        k_norm=None if k_norm is None else _weight(k_norm.weight),
        norm_epsilon=_epsilon(q_norm) if q_norm is not None else 1e-6,
        scale=float(attn.scaling),
    )


def _mlp(op: OpBuilder, x: ir.Value, mlp) -> ir.Value:
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, silu as ``g * Sigmoid(g)``."""
    gate = _linear(op, x, mlp.gate_proj, "gate_proj")
    gated = op.Mul(op.Mul(gate, op.Sigmoid(gate)), _linear(op, x, mlp.up_proj, "up_proj"))
    return _linear(op, gated, mlp.down_proj, "down_proj")


def _layer_mlp(op: OpBuilder, x: ir.Value, mlp, functions: dict[str, onnx.FunctionProto]) -> ir.Value:
    """The dense SwiGLU, or for an MoE block one MoE function-op node whose body's
    functions are collected in ``functions`` (one body per model: every layer's must agree)."""
    if not is_moe_block(mlp):
        return _mlp(op, x, mlp)
    y, bodies = moe_mlp(op, x, mlp)
    for body in retarget(bodies, OPSET):
        known = functions.setdefault(body.name, body)
        if known.SerializeToString() != body.SerializeToString():
            raise UsageError(f"MoE layers of different structure (the {body.name} bodies differ); supported: one kind")
    return y


def _with_moe_domain(b, functions: dict[str, onnx.FunctionProto]) -> list[onnx.FunctionProto]:
    """The collected MoE functions; the graph then imports their domain too."""
    if functions:
        b.graph.opset_imports[PROPOSAL_DOMAIN] = 1
    return list(functions.values())


@dataclass(frozen=True)
class _Steps:
    """What every layer's cache step shares, all derived from ``write_indices``."""

    positions: ir.Value  # (B, S) absolute positions of the new tokens
    slots: ir.Value  # (B,) where each sample writes (modulo the window for a ring)
    nonpad: ir.Value  # (B,) valid cache entries after the write


def _steps(op: OpBuilder, input_ids: ir.Value, write_indices: ir.Value, spec: DecoderSpec) -> _Steps:
    seq = op.Gather(op.Shape(input_ids), 1, axis=0)  # scalar: new tokens per sample
    positions = op.Add(op.Unsqueeze(write_indices, [1]), op.Range(0, seq, 1))
    nonpad = op.Add(write_indices, seq)
    if not spec.circular:
        return _Steps(positions, write_indices, nonpad)
    window = spec.sliding_window
    return _Steps(positions, op.Mod(write_indices, window), op.Min(nonpad, window))


def causal_lm_spec(model) -> DecoderSpec:
    """The spec of a supported transformers causal LM; anything else is a UsageError."""
    supported = ", ".join(CAUSAL_LM_CLASSES)
    expected = f"build_decoder expects a transformers *ForCausalLM of a supported architecture ({supported})"
    if not hasattr(getattr(model, "config", None), "model_type"):
        raise UsageError(f"{expected}; got {type(model).__name__}")
    spec = decoder_spec(model.config)  # names an unsupported architecture or feature
    if not (type(model).__name__.endswith("ForCausalLM") and hasattr(model, "model") and hasattr(model, "lm_head")):
        raise UsageError(f"{expected}; got {type(model).__name__}, which has no language-model head")
    return spec


# --8<-- [start:build_decoder]
def build_decoder(hf_causal_lm) -> onnx.ModelProto:
    """An opset-24 ONNX decoder (TensorScatter-24 cache + Attention-24) for a transformers
    Llama, Qwen2, Qwen3 or Mistral causal LM, weights stored as initializers.

    Each layer's attention is the KV-cache proposal's :func:`attention_block`; this
    function adds the embedding, the norms, the MLPs and the language-model head. An MoE
    block (Qwen3-MoE, Mixtral) becomes the MoE proposal's function op (``moe_mlp.py``)."""
    spec = causal_lm_spec(hf_causal_lm)
    body = hf_causal_lm.model
    b = graph_builder(f"{spec.model_type}_decoder", {"": OPSET})
    op = b.op
    input_ids = b.input("input_ids", INT64, ["batch", "seq"])
    write_indices = b.input("write_indices", INT64, ["batch"])
    length = spec.sliding_window if spec.circular else "cache_len"
    cache = ["batch", spec.num_kv_heads, length, spec.head_dim]
    pasts = [
        (b.input(f"past_key_{i}", FLOAT, cache), b.input(f"past_value_{i}", FLOAT, cache))
        for i in range(spec.num_layers)
    ]
    steps = _steps(op, input_ids, write_indices, spec)
    cos, sin = _rope_tables(hf_causal_lm, spec)
    cos, sin = b.initializer(ir.tensor(cos), "rope.cos_cache"), b.initializer(ir.tensor(sin), "rope.sin_cache")
    rope = Rope(cos, sin, steps.positions)
    embed = b.initializer(ir.tensor(_weight(body.embed_tokens.weight)), "embed_tokens.weight")
    functions: dict[str, onnx.FunctionProto] = {}  # the MoE function op's body, if any layer is MoE
    x = op.Gather(embed, input_ids, axis=0)
    presents = []
    for i, (layer, (past_key, past_value)) in enumerate(zip(body.layers, pasts, strict=True)):
        b.push_module(f"layers.{i}")
        h = _rms_norm(op, x, layer.input_layernorm, "input_layernorm")
        b.push_module("self_attn")
        attn, present_key, present_value = attention_block(
            op,
            h,
            attention_weights(layer.self_attn),
            rope,
            CacheInputs(past_key, past_value, steps.slots, steps.nonpad),
            q_heads=spec.num_heads,
            kv_heads=spec.num_kv_heads,
            mode="circular" if spec.circular else "linear",
        )
        b.pop_module()
        x = op.Add(x, attn)
        h = _rms_norm(op, x, layer.post_attention_layernorm, "post_attention_layernorm")
        b.push_module("mlp")
        x = op.Add(x, _layer_mlp(op, h, layer.mlp, functions))
        b.pop_module()
        b.pop_module()
        presents += [(present_key, f"present_key_{i}"), (present_value, f"present_value_{i}")]
    x = _rms_norm(op, x, body.norm, "norm")
    if hf_causal_lm.config.tie_word_embeddings:
        head = op.Transpose(embed, perm=[1, 0])
    else:
        head = b.initializer(ir.tensor(_transposed(hf_causal_lm.lm_head)), "lm_head.weight")
    b.add_output(op.MatMul(x, head), "logits")
    for value, name in presents:
        b.add_output(value, name)
    model = builder_model(b, _with_moe_domain(b, functions))
    model.metadata_props.extend([onnx.StringStringEntryProto(key=k, value=str(v)) for k, v in vars(spec).items()])
    return model


# --8<-- [end:build_decoder]


def spec_from_model(model: onnx.ModelProto) -> DecoderSpec:
    """Read a built decoder's spec back from its metadata."""
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [f for f in DecoderSpec.__dataclass_fields__ if f not in meta]
    if missing:
        raise UsageError(f"not a text_pipeline decoder: metadata lacks {', '.join(missing)}")
    if meta["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise UsageError(
            f"decoder metadata model_type={meta['model_type']!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    counts = {k: _positive_int(k, meta[k]) for k in DecoderSpec.__dataclass_fields__ if k not in _NOT_COUNTS}
    window = meta["sliding_window"]
    return DecoderSpec(
        model_type=meta["model_type"],
        sliding_window=None if window == "None" else _positive_int("sliding_window", window),
        **counts,
    )


_NOT_COUNTS = ("model_type", "sliding_window")


def _positive_int(key: str, text: str) -> int:
    """A decoder metadata value that must be a positive integer (written by ``build_decoder``)."""
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise UsageError(f"decoder metadata {key}={text!r}; expected a positive integer")
    return int(text)
