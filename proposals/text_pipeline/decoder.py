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
from onnx import TensorProto, helper

from generator.errors import UsageError
from generator.onnx_build import initializer, make_model
from generator.torch_reference import float64_mode

OPSET = 24
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # cos/sin independent of length
CAUSAL_LM_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")


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


class _Graph:
    """Accumulates nodes and initializers; names are derived from a prefix."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(initializer(name, array))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outputs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{name}_node", **attrs))
        return outputs[0]


def _weight(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().astype(np.float32)


def _linear(g: _Graph, x: str, module, name: str) -> str:
    """``x @ W.T + b`` with the transposed weight stored as the initializer."""
    y = g.op("MatMul", [x, g.const(f"{name}.weight_t", _weight(module.weight).T)], f"{name}.out")
    if module.bias is not None:
        y = g.op("Add", [y, g.const(f"{name}.bias", _weight(module.bias))], f"{name}.biased")
    return y


def _rms_norm(g: _Graph, x: str, module, name: str) -> str:
    eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
    w = g.const(f"{name}.weight", _weight(module.weight))
    return g.op("RMSNormalization", [x, w], f"{name}.out", axis=-1, epsilon=eps)


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


def _heads(g: _Graph, x: str, n_heads: int, spec: DecoderSpec, name: str, norm=None) -> str:
    """[B, S, n*D] -> [B, n, S, D], with Qwen3's per-head RMSNorm before the transpose."""
    shape = g.const(f"{name}.shape", np.array([0, 0, n_heads, spec.head_dim], np.int64))
    y = g.op("Reshape", [x, shape], f"{name}.split")
    if norm is not None:
        y = _rms_norm(g, y, norm, f"{name}_norm")
    return g.op("Transpose", [y], f"{name}.bhsd", perm=[0, 2, 1, 3])


def _attention_block(g: _Graph, x: str, attn, spec: DecoderSpec, i: int, ctx: dict) -> str:
    p = f"layers.{i}.attn"
    q = _heads(
        g,
        _linear(g, x, attn.q_proj, f"{p}.q_proj"),
        spec.num_heads,
        spec,
        f"{p}.q",
        getattr(attn, "q_norm", None),
    )
    k = _heads(
        g,
        _linear(g, x, attn.k_proj, f"{p}.k_proj"),
        spec.num_kv_heads,
        spec,
        f"{p}.k",
        getattr(attn, "k_norm", None),
    )
    v = _heads(g, _linear(g, x, attn.v_proj, f"{p}.v_proj"), spec.num_kv_heads, spec, f"{p}.v")
    rope_in = [ctx["cos"], ctx["sin"], ctx["positions"]]
    q = g.op("RotaryEmbedding", [q, *rope_in], f"{p}.q_rot")
    k = g.op("RotaryEmbedding", [k, *rope_in], f"{p}.k_rot")
    mode = "circular" if spec.circular else "linear"
    present_k = g.op("TensorScatter", [f"past_key_{i}", k, ctx["slots"]], f"present_key_{i}", axis=2, mode=mode)
    present_v = g.op(
        "TensorScatter",
        [f"past_value_{i}", v, ctx["slots"]],
        f"present_value_{i}",
        axis=2,
        mode=mode,
    )
    y = g.op(
        "Attention",
        [q, present_k, present_v, "", "", "", ctx["nonpad"]],
        f"{p}.y",
        is_causal=1,
        q_num_heads=spec.num_heads,
        kv_num_heads=spec.num_kv_heads,
        scale=float(attn.scaling),
    )
    y = g.op("Transpose", [y], f"{p}.y_bshd", perm=[0, 2, 1, 3])
    merged = g.const(f"{p}.merge_shape", np.array([0, 0, spec.num_heads * spec.head_dim], np.int64))
    y = g.op("Reshape", [y, merged], f"{p}.y_merged")
    return _linear(g, y, attn.o_proj, f"{p}.o_proj")


def _mlp_block(g: _Graph, x: str, mlp, i: int) -> str:
    p = f"layers.{i}.mlp"
    gate = _linear(g, x, mlp.gate_proj, f"{p}.gate_proj")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.sigmoid")], f"{p}.silu")
    hidden = g.op("Mul", [silu, _linear(g, x, mlp.up_proj, f"{p}.up_proj")], f"{p}.gated")
    return _linear(g, hidden, mlp.down_proj, f"{p}.down_proj")


def _cache_context(g: _Graph, spec: DecoderSpec, cos: np.ndarray, sin: np.ndarray) -> dict:
    """Positions, scatter slots and valid lengths, all derived from ``write_indices``."""
    seq = g.op("Gather", ["input_ids_shape", g.const("one", np.array(1, np.int64))], "seq_len", axis=0)
    g.nodes.insert(
        0,
        helper.make_node("Shape", ["input_ids"], ["input_ids_shape"], name="input_ids_shape_node"),
    )
    steps = g.op("Range", [g.const("zero", np.array(0, np.int64)), seq, "one"], "steps")
    starts = g.op("Unsqueeze", ["write_indices", g.const("axis1", np.array([1], np.int64))], "write_starts")
    positions = g.op("Add", [starts, steps], "rope_positions")
    nonpad = g.op("Add", ["write_indices", seq], "kv_end")
    slots = "write_indices"
    if spec.circular:
        window = g.const("window", np.array(spec.sliding_window, np.int64))
        nonpad = g.op("Min", [nonpad, window], "kv_valid")
        slots = g.op("Mod", ["write_indices", window], "write_slots")
    else:
        nonpad = g.op("Identity", [nonpad], "kv_valid")
    return {
        "positions": positions,
        "nonpad": nonpad,
        "slots": slots,
        "cos": g.const("rope.cos_cache", cos),
        "sin": g.const("rope.sin_cache", sin),
    }


def _io(spec: DecoderSpec) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    length = spec.sliding_window if spec.circular else "cache_len"
    cache = ["batch", spec.num_kv_heads, length, spec.head_dim]
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("write_indices", TensorProto.INT64, ["batch"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", spec.vocab_size])]
    for i in range(spec.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", f32, cache))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", f32, cache))
    return inputs, outputs


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
    Llama, Qwen2, Qwen3 or Mistral causal LM, weights stored as initializers."""
    spec = causal_lm_spec(hf_causal_lm)
    body = hf_causal_lm.model
    g = _Graph()
    ctx = _cache_context(g, spec, *_rope_tables(hf_causal_lm, spec))
    embed = g.const("embed_tokens.weight", _weight(body.embed_tokens.weight))
    x = g.op("Gather", [embed, "input_ids"], "embedded", axis=0)
    for i, layer in enumerate(body.layers):
        h = _rms_norm(g, x, layer.input_layernorm, f"layers.{i}.input_layernorm")
        x = g.op("Add", [x, _attention_block(g, h, layer.self_attn, spec, i, ctx)], f"layers.{i}.res1")
        h = _rms_norm(g, x, layer.post_attention_layernorm, f"layers.{i}.post_attention_layernorm")
        x = g.op("Add", [x, _mlp_block(g, h, layer.mlp, i)], f"layers.{i}.res2")
    x = _rms_norm(g, x, body.norm, "final_norm")
    if hf_causal_lm.config.tie_word_embeddings:
        head = g.op("Transpose", [embed], "lm_head.weight_t", perm=[1, 0])
        g.op("MatMul", [x, head], "logits")
    else:
        g.op(
            "MatMul",
            [x, g.const("lm_head.weight_t", _weight(hf_causal_lm.lm_head.weight).T)],
            "logits",
        )
    inputs, outputs = _io(spec)
    graph = helper.make_graph(g.nodes, f"{spec.model_type}_decoder", inputs, outputs, g.inits)
    model = make_model(graph, {"": OPSET})
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
