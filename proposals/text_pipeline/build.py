"""Convert a transformers Llama-family causal LM into an opset-24 ONNX decoder.

The graph follows the KV-cache pattern of ONNX's `kv_cache.md`: the cache is a static
buffer per layer, written by TensorScatter-24 at per-sample ``write_indices`` and read
whole by Attention-24 with ``nonpad_kv_seqlen`` and ``is_causal=1`` (bottom-right
aligned). One graph serves prefill (``write_indices = 0``, many tokens) and decode
(``write_indices = tokens so far``, one token). Sliding-window configs use a circular
buffer whose length is the window; configs that alternate sliding and full layers
(Gemma 2/3) keep both kinds in one graph, a circular buffer per sliding layer and a
linear one per full layer. A hybrid (Qwen3.5, Qwen3-Next) has no KV cache on its ``linear_attention``
layers: each carries a conv state and a recurrent state instead (LinearAttention-27, so
its graph is opset 27).

Graph signature (``L`` = cache length, fixed to the window for circular buffers, per layer)::

    input_ids      int64 [batch, seq]
    write_indices  int64 [batch]            tokens already in the cache, per sample
    past_key_i     float [batch, kv_heads, L, head_dim]   (and past_value_i)
    -> logits      float [batch, seq, vocab]
    past_conv_i    float [batch, C, K-1]    a hybrid's recurrent layer i: the last K-1 conv inputs
    past_state_i   float [batch, H_v, d_k, d_v]           and LinearAttention's state
    -> present_key_i / present_value_i      same shape as past_* (present_conv_i / present_state_i)

Positions (``write_indices + arange(seq)``) and ``nonpad_kv_seqlen``
(``write_indices + seq``, capped at ``L`` for a circular buffer) are computed in the
graph, so a caller cannot make them disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import GraphBuilder, OpBuilder

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN, builder_model, graph_builder
from generator.torch_reference import float64_mode
from proposals.kv_cache.build import FLOAT, INT64, AttentionWeights, CacheInputs, Rope, attention_block
from proposals.linear_attention.hf import GatedDeltaWeights, gated_delta_weights, mixer_outputs
from proposals.text_pipeline.moe_mlp import is_moe_block, moe_mlp, retarget

OPSET = 24
SUPPORTED_MODEL_TYPES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
    "smollm3",
    "qwen3_5_text",
    "qwen3_next",
)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # cos/sin independent of length
# why the length-dependent ones are refused (named in the error)
ROPE_REFUSALS = {
    "dynamic": "its tables are recomputed as the sequence grows",
    "longrope": "its table follows the batch's longest position, and Phi-3's generate re-prefills the cache "
    "when it switches",
}
CAUSAL_LM_CLASSES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "Olmo2ForCausalLM",
    "GraniteForCausalLM",
    "SmolLM3ForCausalLM",
    "Qwen3_5ForCausalLM",
    "Qwen3NextForCausalLM",
)
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # SwiGLU, GeGLU (Gemma)
LAYER_TYPES = ("full_attention", "sliding_attention")  # attention layers, by their cache buffer
# Hybrid decoders: their ``linear_attention`` layers are gated-delta mixers, LinearAttention-27
# (so the graph is opset 27) with a conv state and a recurrent state instead of a KV cache
RECURRENT_LAYER_TYPES = ("linear_attention",)
HYBRID_MODEL_TYPES = ("qwen3_5_text", "qwen3_next")
HYBRID_OPSET = 27
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
    full_layers: tuple[int, ...] = ()  # layers keeping a linear buffer although a window is set
    recurrent_layers: tuple[int, ...] = ()  # gated-delta layers (conv + recurrent state, no KV cache)

    @property
    def circular(self) -> bool:
        """Some layer keeps a circular buffer of ``sliding_window`` slots."""
        return self.sliding_window is not None

    @property
    def linear(self) -> bool:
        """Some layer keeps a linear buffer (whose length then bounds the context)."""
        return not self.circular or bool(self.full_layers)

    @property
    def mixed(self) -> bool:
        """Circular and linear buffers in one graph (Gemma's alternating layers)."""
        return self.circular and bool(self.full_layers)

    def layer_circular(self, layer: int) -> bool:
        return self.circular and layer not in self.full_layers and layer not in self.recurrent_layers

    def layer_recurrent(self, layer: int) -> bool:
        return layer in self.recurrent_layers

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers with a KV cache (all of them but a hybrid's recurrent ones)."""
        return tuple(i for i in range(self.num_layers) if i not in self.recurrent_layers)

    def cache_shape(self, batch: int, length: int, layer: int | None = None) -> tuple[int, int, int, int]:
        """Shape of one layer's key (or value) buffer (``layer`` is required when kinds mix)."""
        if layer is not None and self.layer_recurrent(layer):
            raise UsageError(f"layer {layer} is a recurrent layer: it keeps a conv and a recurrent state, no KV cache")
        if layer is None and self.mixed:
            raise UsageError(
                f"decoder mixes circular and linear caches (full layers {list(self.full_layers)}); "
                "cache_shape needs the layer"
            )
        if self.layer_circular(0 if layer is None else layer):
            length = self.sliding_window
        return (batch, self.num_kv_heads, length, self.head_dim)


# --8<-- [end:spec]


def refuse_recurrent(spec: DecoderSpec, backend: str, why: str) -> None:
    """A one-line UsageError when a backend that runs attention layers only gets a hybrid."""
    if spec.recurrent_layers:
        layers = ", ".join(map(str, spec.recurrent_layers))
        raise UsageError(
            f"the {backend} backend {why}; this {spec.model_type} decoder's layers {layers} keep a conv and a "
            f"recurrent state per sequence; valid: the onnxruntime backend for hybrid decoders, {backend} for "
            "decoders whose every layer is attention"
        )


def _config_value(config, name: str, default=None):
    return getattr(config, name, default)


def _cache_layout(config) -> tuple[int | None, tuple[int, ...]]:
    """The window and the layers that keep a linear buffer: ``(None, ())`` when no layer
    slides, ``(window, ())`` when every layer does, ``(window, full layers)`` when
    ``layer_types`` mixes them (Gemma's alternation, Qwen2's ``max_window_layers``)."""
    window = _config_value(config, "sliding_window")
    layer_types = _config_value(config, "layer_types")
    if window is None:
        return None, ()
    if layer_types is None:
        return int(window), ()
    full = tuple(i for i, kind in enumerate(layer_types) if kind == "full_attention")
    attention = [kind for kind in layer_types if kind in LAYER_TYPES]
    return (None, ()) if len(full) == len(attention) else (int(window), full)


def _recurrent_layers(config, model_type: str) -> tuple[int, ...]:
    """The layers ``layer_types`` marks ``linear_attention`` (hybrid decoders only); any other
    layer type than the attention and recurrent ones is refused, naming the valid ones."""
    layer_types = _config_value(config, "layer_types")
    if layer_types is None:
        return ()
    valid = (*LAYER_TYPES, *RECURRENT_LAYER_TYPES)
    unknown = sorted(set(layer_types) - set(valid))
    if unknown:
        raise UsageError(
            f"unsupported config feature: layer_types {unknown}; supported: {', '.join(valid)} "
            f"({', '.join(RECURRENT_LAYER_TYPES)} in {', '.join(HYBRID_MODEL_TYPES)} only)"
        )
    recurrent = tuple(i for i, kind in enumerate(layer_types) if kind in RECURRENT_LAYER_TYPES)
    if recurrent and model_type not in HYBRID_MODEL_TYPES:
        raise UsageError(
            f"unsupported config feature: {model_type!r} with layer_types {', '.join(RECURRENT_LAYER_TYPES)}; "
            f"supported in the hybrid decoders: {', '.join(HYBRID_MODEL_TYPES)}"
        )
    if len(recurrent) == len(layer_types):
        raise UsageError("unsupported config: every layer is recurrent; supported: at least one attention layer")
    return recurrent


def _rope_per_layer_type(config) -> bool:
    """Gemma 3 keys ``rope_parameters`` by layer type (a local base for sliding layers)."""
    rope = _config_value(config, "rope_parameters") or {}
    return bool(rope) and set(rope) <= set(LAYER_TYPES) and all(isinstance(v, dict) for v in rope.values())


def _rope_parameter_sets(config) -> list[dict]:
    """The rope parameters of every layer kind."""
    rope = _config_value(config, "rope_parameters") or {}
    return list(rope.values()) if _rope_per_layer_type(config) else [rope]


def _check_gemma_features(config) -> None:
    if _config_value(config, "use_bidirectional_attention"):
        raise UsageError("unsupported config feature: use_bidirectional_attention=True; supported: causal (False)")


def decoder_spec(config) -> DecoderSpec:
    """Check a transformers config and describe the decoder it converts to.

    Raises UsageError naming the first unsupported architecture or feature.
    """
    model_type = _config_value(config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (Gemma 3 with vision: convert its text model, Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise UsageError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}{hint}"
        )
    act_key = "hidden_act" if _config_value(config, "hidden_act") is not None else "hidden_activation"
    act = _config_value(config, act_key)
    if act not in SUPPORTED_ACTIVATIONS:
        raise UsageError(
            f"unsupported config feature: {act_key}={act!r}; supported: {', '.join(map(repr, SUPPORTED_ACTIVATIONS))}"
        )
    _check_gemma_features(config)
    if (_config_value(config, "pretraining_tp") or 1) != 1:
        raise UsageError("unsupported config feature: pretraining_tp != 1; supported: 1")
    heads = config.num_attention_heads
    kv_heads = _config_value(config, "num_key_value_heads") or heads
    head_dim = _config_value(config, "head_dim") or config.hidden_size // heads
    for rope in _rope_parameter_sets(config):
        _check_rope(rope, head_dim)
    recurrent_layers = _recurrent_layers(config, model_type)
    window, full_layers = _cache_layout(config)
    _check_rope_layers(config)
    return DecoderSpec(
        model_type=model_type,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        sliding_window=window,
        full_layers=full_layers,
        recurrent_layers=recurrent_layers,
    )


def _check_rope(rope: dict, head_dim: int) -> None:
    """One set of rope parameters: a length-independent table, an even rotary dimension."""
    rope_type = rope.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        why = f" ({ROPE_REFUSALS[rope_type]})" if rope_type in ROPE_REFUSALS else ""
        raise UsageError(
            f"unsupported config feature: rope_type={rope_type!r}{why}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    partial = rope.get("partial_rotary_factor", 1.0)
    rotary_dim = int(head_dim * partial) if 0 < partial <= 1 else 0  # transformers' rounding
    if rotary_dim < 2 or rotary_dim % 2:
        raise UsageError(
            f"unsupported config feature: partial_rotary_factor={partial}; supported: a factor in (0, 1] "
            f"giving an even rotary dimension of at least 2 (head_dim {head_dim})"
        )


def _check_rope_layers(config) -> None:
    """SmolLM3's ``no_rope_layers``: one 0/1 flag per layer (1: the layer applies RoPE)."""
    flags = _config_value(config, "no_rope_layers")
    if flags is None:
        return
    if len(flags) != config.num_hidden_layers or not set(flags) <= {0, 1}:
        raise UsageError(
            f"unsupported config feature: no_rope_layers={list(flags)}; "
            f"supported: one 0/1 flag per layer ({config.num_hidden_layers} layers)"
        )


def _uses_rope(config, layer: int) -> bool:
    """Whether ``layer`` rotates its queries and keys (SmolLM3 leaves some layers without RoPE)."""
    flags = _config_value(config, "no_rope_layers")
    return flags is None or bool(flags[layer])


def _weight(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().astype(np.float32)


def _transposed(linear) -> np.ndarray:
    """A torch Linear's weight in the ``x @ w`` layout the graph stores."""
    return _weight(linear.weight).T


def _bias(linear) -> np.ndarray | None:
    return None if linear.bias is None else _weight(linear.bias)


def _epsilon(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


OFFSET_NORMS = (
    "Gemma2RMSNorm",
    "Gemma3RMSNorm",
    "Qwen3_5RMSNorm",
    "Qwen3NextRMSNorm",
)  # scale by (1 + weight), weight zero-centred


def _norm_scale(norm) -> np.ndarray:
    """An RMSNorm's scale; Gemma's is ``1 + weight``, added in float32 as transformers does."""
    weight = _weight(norm.weight)
    return weight + np.float32(1) if type(norm).__name__ in OFFSET_NORMS else weight


def _rms_norm(op: OpBuilder, x: ir.Value, norm, name: str) -> ir.Value:
    weight = op.initializer(ir.tensor(_norm_scale(norm)), f"{name}.weight")
    return op.RMSNormalization(x, weight, axis=-1, epsilon=_epsilon(norm))


def _linear(op: OpBuilder, x: ir.Value, linear, name: str) -> ir.Value:
    y = op.MatMul(x, op.initializer(ir.tensor(_transposed(linear)), f"{name}.weight"))
    bias = _bias(linear)
    return y if bias is None else op.Add(y, op.initializer(ir.tensor(bias), f"{name}.bias"))


def _rope_tables(hf_model, spec: DecoderSpec, layer_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches ``[max_positions, head_dim/2]`` computed by the model's own rotary module,
    so every static rope variant (default, linear, llama3, yarn) matches by construction.
    The module runs in float64 and the tables are cast once: a float32 cos/sin kernel
    differs per CPU, and these tables are committed zoo bytes. ``layer_type`` picks the
    table of one layer kind where the module keeps one per kind (Gemma 3's local base)."""
    import torch

    rotary = hf_model.model.rotary_emb
    positions = torch.arange(spec.max_positions)[None, :]
    probe = torch.zeros(1, dtype=torch.float64)
    with float64_mode():
        cos, sin = rotary(probe, positions) if layer_type is None else rotary(probe, positions, layer_type)
    half = cos.shape[-1] // 2  # rotary_dim / 2 under partial_rotary_factor
    return _weight(cos[0, :, :half]), _weight(sin[0, :, :half])


SOFTCAPPED = ("Gemma2Attention",)  # attention modules that apply attn_logit_softcapping


def _columns(weight: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """A fused ``x @ w`` weight cut into consecutive column blocks of ``sizes``."""
    assert sum(sizes) == weight.shape[1], (sizes, weight.shape)
    return [np.ascontiguousarray(w) for w in np.split(weight, np.cumsum(sizes)[:-1], axis=1)]


def _qkv(attn) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of the q, k and v projections; Phi-3's fused ``qkv_proj`` (no bias) is
    cut at conversion, so the graph is the same three MatMuls as Llama's."""
    if hasattr(attn, "qkv_proj"):
        q, kv = attn.config.num_attention_heads * attn.head_dim, attn.num_key_value_heads * attn.head_dim
        return [(w, None) for w in _columns(_transposed(attn.qkv_proj), [q, kv, kv])]
    return [(_transposed(p), _bias(p)) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]


GATED_ATTENTION = ("Qwen3_5Attention", "Qwen3NextAttention")  # q_proj holds [query | gate] per head


def _query_and_gate(weight: np.ndarray | None, heads: int, head_dim: int) -> tuple[np.ndarray | None, ...]:
    """A gated ``q_proj``'s columns (or bias) cut into the query's and the output gate's:
    each head's ``2 * head_dim`` outputs are ``[query | gate]``."""
    if weight is None:
        return None, None
    per_head = weight.reshape(*weight.shape[:-1], heads, 2, head_dim)
    return tuple(np.ascontiguousarray(per_head[..., i, :].reshape(*weight.shape[:-1], -1)) for i in (0, 1))


def attention_weights(attn) -> AttentionWeights:
    """A transformers attention module's weights in the KV proposal's layer builder's form.

    Gemma 2's module passes ``attn_logit_softcapping`` to its attention; Gemma 3's keeps the
    attribute but never applies it, so only Gemma 2 gets Attention's ``softcap``. Qwen3.5's
    ``q_proj`` also computes a sigmoid gate on the attention's output (``output_gate``)."""
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    (q_proj, q_bias), (k_proj, k_bias), (v_proj, v_bias) = _qkv(attn)
    gate = gate_bias = None
    if type(attn).__name__ in GATED_ATTENTION:
        heads = attn.config.num_attention_heads
        (q_proj, gate), (q_bias, gate_bias) = (_query_and_gate(w, heads, attn.head_dim) for w in (q_proj, q_bias))
    return AttentionWeights(
        q_proj=q_proj,
        k_proj=k_proj,
        v_proj=v_proj,
        o_proj=_transposed(attn.o_proj),
        q_bias=q_bias,
        k_bias=k_bias,
        v_bias=v_bias,
        o_bias=_bias(attn.o_proj),
        q_norm=None if q_norm is None else _norm_scale(q_norm),
        k_norm=None if k_norm is None else _norm_scale(k_norm),
        norm_epsilon=_epsilon(q_norm) if q_norm is not None else 1e-6,
        scale=float(attn.scaling),
        softcap=_softcap(attn.config, "attn_logit_softcapping") if type(attn).__name__ in SOFTCAPPED else None,
        output_gate=gate,
        output_gate_bias=gate_bias,
    )


def _softcap(config, name: str) -> float | None:
    cap = _config_value(config, name)
    return None if cap is None else float(cap)


def _capped(op: OpBuilder, x: ir.Value, cap: float | None) -> ir.Value:
    """``cap * tanh(x / cap)`` (Gemma's final logit softcapping), or ``x`` without a cap."""
    return x if cap is None else op.Mul(op.Tanh(op.Div(x, cap)), cap)


def _gate_or_up(op: OpBuilder, x: ir.Value, mlp, part: str) -> ir.Value:
    """The MLP's ``part`` ("gate" or "up") projection; Phi-3's fused ``gate_up_proj``
    ([gate | up], no bias) is cut at conversion into the same two MatMuls as Llama's."""
    if not hasattr(mlp, "gate_up_proj"):
        return _linear(op, x, getattr(mlp, f"{part}_proj"), f"{part}_proj")
    gate, up = _columns(_transposed(mlp.gate_up_proj), [mlp.gate_up_proj.out_features // 2] * 2)
    return op.MatMul(x, op.initializer(ir.tensor(gate if part == "gate" else up), f"{part}_proj.weight"))


def _mlp(op: OpBuilder, x: ir.Value, mlp, act: str = "silu") -> ir.Value:
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, silu as ``g * Sigmoid(g)``; GeGLU (Gemma's
    ``gelu_pytorch_tanh``) with Gelu-20's tanh approximation instead."""
    gate = _gate_or_up(op, x, mlp, "gate")
    activated = op.Gelu(gate, approximate="tanh") if act == "gelu_pytorch_tanh" else op.Mul(gate, op.Sigmoid(gate))
    gated = op.Mul(activated, _gate_or_up(op, x, mlp, "up"))
    return _linear(op, gated, mlp.down_proj, "down_proj")


def _layer_mlp(
    op: OpBuilder, x: ir.Value, mlp, act: str, functions: dict[str, onnx.FunctionProto], opset: int = OPSET
) -> ir.Value:
    """The dense gated MLP, or for an MoE block one MoE function-op node whose body's
    functions are collected in ``functions`` (one body per model: every layer's must agree)."""
    if not is_moe_block(mlp):
        return _mlp(op, x, mlp, act)
    y, bodies = moe_mlp(op, x, mlp)
    for body in retarget(bodies, opset):  # the decoder's own opset (27 in a hybrid)
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
class LayerNorms:
    """Which RMSNorm module (by attribute name) a decoder layer applies to the input or the
    output of its attention and MLP blocks; None where there is none."""

    attn_in: str | None
    attn_out: str | None
    mlp_in: str | None
    mlp_out: str | None


PRE_NORMS = LayerNorms("input_layernorm", None, "post_attention_layernorm", None)  # Llama and most others
# OLMo-2 norms the blocks' outputs only; Gemma 2/3 norm inputs and outputs (sandwich norms)
SANDWICH_NORMS = LayerNorms(
    "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"
)
LAYER_NORMS = {
    "olmo2": LayerNorms(None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
    "gemma2": SANDWICH_NORMS,
    "gemma3_text": SANDWICH_NORMS,
}


def _maybe_norm(op: OpBuilder, x: ir.Value, layer, name: str | None) -> ir.Value:
    return x if name is None else _rms_norm(op, x, getattr(layer, name), name)


def _residual(op: OpBuilder, x: ir.Value, y: ir.Value, multiplier: float) -> ir.Value:
    """``x + y * multiplier`` (Granite's residual_multiplier; the Mul is left out at 1)."""
    return op.Add(x, y if multiplier == 1.0 else op.Mul(y, op.Constant(value_float=multiplier)))


def _scaled(op: OpBuilder, x: ir.Value, config, name: str, divide: bool = False) -> ir.Value:
    """``x`` times (or divided by) the config's scalar ``name`` when it is not 1 (Granite's
    embedding_multiplier and logits_scaling), as transformers computes it."""
    factor = float(_config_value(config, name, 1.0))
    if factor == 1.0:
        return x
    constant = op.Constant(value_float=factor)
    return op.Div(x, constant) if divide else op.Mul(x, constant)


@dataclass(frozen=True)
class _Steps:
    """What every layer's cache step shares, all derived from ``write_indices``."""

    positions: ir.Value  # (B, S) absolute positions of the new tokens
    slots: ir.Value  # (B,) where each sample writes (modulo the window for a ring)
    nonpad: ir.Value  # (B,) valid cache entries after the write


def _steps(op: OpBuilder, input_ids: ir.Value, write_indices: ir.Value, spec: DecoderSpec) -> dict[bool, _Steps]:
    """The steps of each cache kind the decoder uses, keyed by ``circular``."""
    seq = op.Gather(op.Shape(input_ids), 1, axis=0)  # scalar: new tokens per sample
    positions = op.Add(op.Unsqueeze(write_indices, [1]), op.Range(0, seq, 1))
    nonpad = op.Add(write_indices, seq)
    kinds = {spec.layer_circular(i) for i in spec.attention_layers}
    steps = {False: _Steps(positions, write_indices, nonpad)} if False in kinds else {}
    if True in kinds:
        window = spec.sliding_window
        steps[True] = _Steps(positions, op.Mod(write_indices, window), op.Min(nonpad, window))
    return steps


def _ropes(b: GraphBuilder, hf_model, spec: DecoderSpec, positions: ir.Value) -> dict[str, Rope]:
    """RotaryEmbedding inputs per layer kind: one table for every layer, or (Gemma 3) a
    table per entry of ``rope_parameters`` keyed by layer type (local base for sliding)."""
    config = hf_model.config
    kinds: dict[str | None, str] = {None: "rope"}
    if _rope_per_layer_type(config):
        names = {"full_attention": "rope", "sliding_attention": "rope_local"}
        kinds = {kind: names[kind] for kind in LAYER_TYPES if kind in config.layer_types}
    ropes = {}
    for kind, name in kinds.items():
        cos, sin = _rope_tables(hf_model, spec, kind)
        rotary_dim = 2 * cos.shape[1]  # the head's first rotary_dim features rotate (all by default)
        cos, sin = (
            b.initializer(ir.tensor(cos), f"{name}.cos_cache"),
            b.initializer(ir.tensor(sin), f"{name}.sin_cache"),
        )
        ropes[kind] = Rope(cos, sin, positions, 0 if rotary_dim == spec.head_dim else rotary_dim)
    return ropes


def _layer_rope(ropes: dict[str | None, Rope], config, layer: int) -> Rope:
    return ropes[None] if None in ropes else ropes[config.layer_types[layer]]


def _embedding(op: OpBuilder, embed: ir.Value, input_ids: ir.Value, module) -> ir.Value:
    """Gather, times Gemma's ``sqrt(hidden)`` embedding scale (a float32 buffer there)."""
    x = op.Gather(embed, input_ids, axis=0)
    scale = getattr(module, "embed_scale", None)
    return x if scale is None else op.Mul(x, float(_weight(scale)))


def _activation(config) -> str:
    return _config_value(config, "hidden_act") or _config_value(config, "hidden_activation")


RECURRENT_STATES = ("conv", "state")  # a recurrent layer's past_conv_i/past_state_i (present_*)


def _cache_inputs(b: GraphBuilder, spec: DecoderSpec, layer: int) -> tuple[ir.Value, ir.Value]:
    """An attention layer's ``past_key_i``/``past_value_i``: a ring of the window, or linear."""
    length = spec.sliding_window if spec.layer_circular(layer) else "cache_len"
    cache = ["batch", spec.num_kv_heads, length, spec.head_dim]
    return b.input(f"past_key_{layer}", FLOAT, cache), b.input(f"past_value_{layer}", FLOAT, cache)


def _recurrent_inputs(b: GraphBuilder, w: GatedDeltaWeights, layer: int) -> tuple[ir.Value, ir.Value]:
    """A gated-delta layer's ``past_conv_i (B, C, K-1)``, the last conv inputs, and
    ``past_state_i (B, H_v, d_k, d_v)``, LinearAttention's state: fixed sizes, no length."""
    conv = b.input(f"past_conv_{layer}", FLOAT, ["batch", w.conv_channels, w.kernel - 1])
    return conv, b.input(f"past_state_{layer}", FLOAT, ["batch", w.v_heads, w.d_k, w.d_v])


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
    Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3, OLMo-2, Granite or SmolLM3 causal
    LM, weights stored as initializers.

    Each layer's attention is the KV-cache proposal's :func:`attention_block`; this
    function adds the embedding, the norms, the MLPs and the language-model head.
    Gemma adds norms after each sublayer too, and caps the final logits. An MoE block
    (Qwen3-MoE, Mixtral) becomes the MoE proposal's function op (``moe_mlp.py``). A hybrid
    (Qwen3.5, Qwen3-Next) mixes in gated-delta layers, the linear-attention proposal's LinearAttention-27
    layer (``hf.mixer_outputs``) with a conv and a recurrent state, and is opset 27."""
    spec = causal_lm_spec(hf_causal_lm)
    body = hf_causal_lm.model
    mixers = {i: gated_delta_weights(body.layers[i].linear_attn) for i in spec.recurrent_layers}
    b = graph_builder(f"{spec.model_type}_decoder", {"": HYBRID_OPSET if mixers else OPSET})
    op = b.op
    input_ids = b.input("input_ids", INT64, ["batch", "seq"])
    write_indices = b.input("write_indices", INT64, ["batch"])
    pasts = [
        _recurrent_inputs(b, mixers[i], i) if i in mixers else _cache_inputs(b, spec, i) for i in range(spec.num_layers)
    ]
    steps = _steps(op, input_ids, write_indices, spec)
    ropes = _ropes(b, hf_causal_lm, spec, steps[spec.layer_circular(spec.attention_layers[0])].positions)
    embed = b.initializer(ir.tensor(_weight(body.embed_tokens.weight)), "embed_tokens.weight")
    functions: dict[str, onnx.FunctionProto] = {}  # the MoE function op's body, if any layer is MoE
    config = hf_causal_lm.config
    x = _scaled(op, _embedding(op, embed, input_ids, body.embed_tokens), config, "embedding_multiplier")
    act = _activation(config)
    norms = LAYER_NORMS.get(spec.model_type, PRE_NORMS)
    residual = float(_config_value(config, "residual_multiplier", 1.0))
    presents = []
    for i, (layer, past) in enumerate(zip(body.layers, pasts, strict=True)):
        b.push_module(f"layers.{i}")
        h = _maybe_norm(op, x, layer, norms.attn_in)
        # --8<-- [start:layer_kind]
        if i in mixers:  # conv + recurrent state in, both updated out
            b.push_module("linear_attn")
            mixed, *states = mixer_outputs(b, h, *past, mixers[i])
            kinds = RECURRENT_STATES
        else:
            step = steps[spec.layer_circular(i)]
            b.push_module("self_attn")
            mixed, *states = attention_block(
                op,
                h,
                attention_weights(layer.self_attn),
                _layer_rope(ropes, config, i) if _uses_rope(config, i) else None,
                CacheInputs(*past, step.slots, step.nonpad),
                q_heads=spec.num_heads,
                kv_heads=spec.num_kv_heads,
                mode="circular" if spec.layer_circular(i) else "linear",
            )
            kinds = ("key", "value")
        # --8<-- [end:layer_kind]
        b.pop_module()
        x = _residual(op, x, _maybe_norm(op, mixed, layer, norms.attn_out), residual)
        h = _maybe_norm(op, x, layer, norms.mlp_in)
        b.push_module("mlp")
        y = _layer_mlp(op, h, layer.mlp, act, functions, HYBRID_OPSET if mixers else OPSET)
        if norms.mlp_out is not None:  # OLMo-2, Gemma: the norm is the layer's module, not the MLP's
            b.pop_module()
            y = _maybe_norm(op, y, layer, norms.mlp_out)
            b.push_module("mlp")
        x = _residual(op, x, y, residual)
        b.pop_module()
        b.pop_module()
        presents += [(value, f"present_{kind}_{i}") for value, kind in zip(states, kinds, strict=True)]
    x = _rms_norm(op, x, body.norm, "norm")
    if hf_causal_lm.config.tie_word_embeddings:
        head = op.Transpose(embed, perm=[1, 0])
    else:
        head = b.initializer(ir.tensor(_transposed(hf_causal_lm.lm_head)), "lm_head.weight")
    logits = _scaled(op, op.MatMul(x, head), config, "logits_scaling", divide=True)
    b.add_output(_capped(op, logits, _softcap(config, "final_logit_softcapping")), "logits")
    for value, name in presents:
        b.add_output(value, name)
    model = builder_model(b, _with_moe_domain(b, functions))
    model.metadata_props.extend([onnx.StringStringEntryProto(key=k, value=v) for k, v in _metadata(spec).items()])
    return model


# --8<-- [end:build_decoder]


def _metadata(spec: DecoderSpec) -> dict[str, str]:
    """The spec as metadata strings; ``full_layers`` only where kinds mix (``"1,3"``),
    ``recurrent_layers`` only in a hybrid."""
    meta = {k: str(v) for k, v in vars(spec).items() if k not in _OPTIONAL}
    for key in _OPTIONAL:
        if getattr(spec, key):
            meta[key] = ",".join(map(str, getattr(spec, key)))
    return meta


def _layer_list(key: str, text: str | None, num_layers: int) -> tuple[int, ...]:
    if text is None:
        return ()
    parts = text.split(",")
    if not all(p.isascii() and p.isdigit() and int(p) < num_layers for p in parts):
        raise UsageError(f"decoder metadata {key}={text!r}; expected comma-separated layer indices below {num_layers}")
    return tuple(map(int, parts))


def spec_from_model(model: onnx.ModelProto) -> DecoderSpec:
    """Read a built decoder's spec back from its metadata."""
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [f for f in DecoderSpec.__dataclass_fields__ if f not in meta and f not in _OPTIONAL]
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
        **{key: _layer_list(key, meta.get(key), counts["num_layers"]) for key in _OPTIONAL},
        **counts,
    )


# absent from the metadata of decoders that do not mix cache kinds / have no recurrent layer
_OPTIONAL = ("full_layers", "recurrent_layers")
_NOT_COUNTS = ("model_type", "sliding_window", *_OPTIONAL)


def _positive_int(key: str, text: str) -> int:
    """A decoder metadata value that must be a positive integer (written by ``build_decoder``)."""
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise UsageError(f"decoder metadata {key}={text!r}; expected a positive integer")
    return int(text)
