"""transformers' gated-delta mixers (Qwen3-Next, Qwen3.5 and Qwen3.5-MoE) as one ONNX layer:
standard ops plus LinearAttention-27, with the conv and recurrent states carried.

The converter reads the module's weights and nothing else; its layout quirks are resolved by
running the module's own code on an identity basis (Qwen3-Next's grouped q/k/v/z/b/a
interleave), not by restating it. The graph (one per layer, symbolic ``seq``):

- ``hidden_states (B, seq, hidden)``, ``past_conv (B, C, K-1)``, ``past_state (B, H_v, d_k, d_v)``
  -> ``output (B, seq, hidden)``, ``present_conv``, ``present_state``;
- projections (MatMul), the short causal convolution as ``Conv`` (group = C, no padding) over
  ``Concat(past_conv, x)``, SiLU as ``x * Sigmoid(x)``;
- q and k L2-normalised per head (transformers' ``l2norm``: ``x / sqrt(sum x^2 + 1e-6)``), then
  repeated to the value heads when ``H_v > H_k`` (each key head serves ``H_v / H_k`` consecutive
  value heads, so LinearAttention sees ``H_q = H_kv = H_v``);
- ``beta = Sigmoid(b)``, ``decay = -exp(A_log) * Softplus(a + dt_bias)`` (one per head);
- ``LinearAttention(update_rule="gated_delta")``, default scale ``1/sqrt(d_k)``;
- the gated RMSNorm per value head (``RMSNormalization-23`` times ``SiLU(z)``), ``out_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from generator.errors import UsageError
from generator.onnx_build import builder_model, graph_builder
from proposals.linear_attention.build import OPSET

FLOAT = ir.DataType.FLOAT
L2_EPS = 1e-6  # transformers' l2norm (aligned with flash-linear-attention)


@dataclass(frozen=True)
class GatedDeltaWeights:
    """One gated-delta mixer, in the flat head-major layout the graph uses."""

    w_q: np.ndarray  # (hidden, H_k * d_k)
    w_k: np.ndarray
    w_v: np.ndarray  # (hidden, H_v * d_v)
    w_z: np.ndarray
    w_b: np.ndarray  # (hidden, H_v)
    w_a: np.ndarray
    conv: np.ndarray  # (C, 1, K), C = 2 * H_k * d_k + H_v * d_v, channels in q, k, v order
    a_log: np.ndarray  # (H_v,)
    dt_bias: np.ndarray
    norm: np.ndarray  # (d_v,)
    w_out: np.ndarray  # (H_v * d_v, hidden)
    k_heads: int
    v_heads: int
    d_k: int
    d_v: int
    eps: float
    beta_scale: float = 1.0  # OLMo-Hybrid's allow_neg_eigval: beta in (0, 2)

    @property
    def conv_channels(self) -> int:
        return self.conv.shape[0]

    @property
    def kernel(self) -> int:
        return self.conv.shape[2]


def _t(linear) -> np.ndarray:
    return linear.weight.detach().double().numpy().T


def _qwen3_next_projections(mixer) -> dict[str, np.ndarray]:
    """q/k/v/z/b/a columns of in_proj_qkvz and in_proj_ba, found by passing each output
    index through the module's own ``fix_query_key_value_ordering``."""
    import torch

    wide = mixer.in_proj_qkvz.out_features
    narrow = mixer.in_proj_ba.out_features
    index_qkvz = torch.arange(wide, dtype=torch.float64).reshape(1, 1, wide)
    index_ba = torch.arange(narrow, dtype=torch.float64).reshape(1, 1, narrow)
    query, key, value, z, b, a = mixer.fix_query_key_value_ordering(index_qkvz, index_ba)
    qkvz, ba = _t(mixer.in_proj_qkvz), _t(mixer.in_proj_ba)

    def columns(weights: np.ndarray, picked) -> np.ndarray:
        return weights[:, picked.reshape(-1).long().numpy()]

    return {
        "w_q": columns(qkvz, query),
        "w_k": columns(qkvz, key),
        "w_v": columns(qkvz, value),
        "w_z": columns(qkvz, z),
        "w_b": columns(ba, b),
        "w_a": columns(ba, a),
    }


def _qwen3_5_projections(mixer) -> dict[str, np.ndarray]:
    qkv = _t(mixer.in_proj_qkv)
    key_dim = mixer.key_dim
    return {
        "w_q": qkv[:, :key_dim],
        "w_k": qkv[:, key_dim : 2 * key_dim],
        "w_v": qkv[:, 2 * key_dim :],
        "w_z": _t(mixer.in_proj_z),
        "w_b": _t(mixer.in_proj_b),
        "w_a": _t(mixer.in_proj_a),
    }


def _olmo_hybrid_projections(mixer) -> dict[str, np.ndarray]:
    names = {"w_q": "q_proj", "w_k": "k_proj", "w_v": "v_proj", "w_z": "g_proj", "w_b": "b_proj", "w_a": "a_proj"}
    return {field: _t(getattr(mixer, name)) for field, name in names.items()} | {"w_out": _t(mixer.o_proj)}


def gated_delta_weights(mixer) -> GatedDeltaWeights:
    """Read a transformers gated-delta mixer (``*GatedDeltaNet``)."""
    if hasattr(mixer, "in_proj_qkvz"):
        projections = _qwen3_next_projections(mixer)
    elif hasattr(mixer, "in_proj_qkv"):
        projections = _qwen3_5_projections(mixer)
    elif hasattr(mixer, "g_proj"):
        projections = _olmo_hybrid_projections(mixer)
    else:
        raise UsageError(
            f"{type(mixer).__name__} has no projection layout the converter knows; valid: in_proj_qkvz + in_proj_ba "
            "(Qwen3-Next), in_proj_qkv/z/b/a (Qwen3.5), q/k/v/g/a/b_proj (OLMo-Hybrid)"
        )
    norm = getattr(mixer, "norm", None) or mixer.o_norm
    if "w_out" not in projections:
        projections["w_out"] = _t(mixer.out_proj)
    if mixer.activation != "silu" or mixer.conv1d.bias is not None:
        raise UsageError(f"{type(mixer).__name__}: conv activation {mixer.activation!r} with bias; valid: silu, none")
    return GatedDeltaWeights(
        **projections,
        conv=mixer.conv1d.weight.detach().double().numpy(),
        a_log=mixer.A_log.detach().double().numpy(),
        dt_bias=mixer.dt_bias.detach().double().numpy(),
        norm=norm.weight.detach().double().numpy(),
        k_heads=mixer.num_k_heads,
        v_heads=mixer.num_v_heads,
        d_k=mixer.head_k_dim,
        d_v=mixer.head_v_dim,
        eps=float(norm.variance_epsilon),
        beta_scale=2.0 if getattr(mixer, "allow_neg_eigval", False) else 1.0,
    )


class _Constants:
    """Named initializers, each added once however often the graph uses it."""

    def __init__(self, b, prefix: str) -> None:
        self.b, self.prefix, self.made = b, prefix, {}

    def __call__(self, name: str, array, dtype=np.float32) -> ir.Value:
        name = self.prefix + name
        if name not in self.made:
            self.made[name] = self.b.op.initializer(ir.tensor(np.asarray(array, dtype), name=name), name)
        return self.made[name]

    def ints(self, name: str, values: list[int]) -> ir.Value:
        return self(name, values, np.int64)


# --8<-- [start:mixer]
def mixer_outputs(b, x: ir.Value, past_conv: ir.Value, past_state: ir.Value, w: GatedDeltaWeights, prefix: str = ""):
    """The layer's ops on ``x (B, seq, hidden)``: returns ``(output, present_conv, present_state)``."""
    op = b.op
    weight = _Constants(b, prefix)

    def silu(value: ir.Value) -> ir.Value:
        return op.Mul(value, op.Sigmoid(value))

    def heads(value: ir.Value, count: int, size: int) -> ir.Value:  # (B, seq, H*D) -> (B, seq, H, D)
        return op.Reshape(value, weight.ints(f"shape_{count}x{size}", [0, 0, count, size]))

    def flat(value: ir.Value) -> ir.Value:  # (B, seq, H, D) -> (B, seq, H*D)
        return op.Reshape(value, weight.ints("shape_flat", [0, 0, -1]))

    # Short causal convolution over [q | k | v] with the last K-1 inputs carried as state.
    w_qkv = np.concatenate([w.w_q, w.w_k, w.w_v], axis=1)
    mixed = op.Transpose(op.MatMul(x, weight("w_qkv", w_qkv)), perm=[0, 2, 1])  # (B, C, seq)
    window = op.Concat(past_conv, mixed, axis=2)
    convolved = op.Conv(window, weight("conv", w.conv), group=w.conv_channels, kernel_shape=[w.kernel])
    present_conv = op.Slice(
        window,
        weight.ints("conv_start", [1 - w.kernel]),
        weight.ints("conv_end", [2**62]),
        weight.ints("conv_axis", [2]),
    )
    qkv = op.Transpose(silu(convolved), perm=[0, 2, 1])  # (B, seq, C)
    key_dim = w.k_heads * w.d_k
    q, k, v = op.Split(qkv, weight.ints("qkv_split", [key_dim, key_dim, w.v_heads * w.d_v]), axis=2, _outputs=3)

    def normalised(value: ir.Value) -> ir.Value:  # l2norm per key head, then repeat to the value heads
        value = heads(value, w.k_heads, w.d_k)
        norm = op.Sqrt(op.Add(op.ReduceSum(op.Mul(value, value), weight.ints("last", [-1])), weight("l2_eps", L2_EPS)))
        value = op.Div(value, norm)
        if w.v_heads != w.k_heads:
            repeat = w.v_heads // w.k_heads
            value = op.Expand(
                op.Unsqueeze(value, weight.ints("axis3", [3])), weight.ints("repeat", [1, 1, 1, repeat, 1])
            )
        return flat(value)

    beta = op.Sigmoid(op.MatMul(x, weight("w_b", w.w_b)))
    if w.beta_scale != 1.0:
        beta = op.Mul(beta, weight("beta_scale", w.beta_scale))
    gate_a = op.Add(op.MatMul(x, weight("w_a", w.w_a)), weight("dt_bias", w.dt_bias))
    decay = op.Mul(weight("neg_exp_a_log", -np.exp(w.a_log)), op.Softplus(gate_a))
    core, present_state = op.LinearAttention(
        normalised(q),
        normalised(k),
        v,
        past_state,
        decay,
        beta,
        q_num_heads=w.v_heads,
        kv_num_heads=w.v_heads,
        update_rule="gated_delta",
        _outputs=2,
    )
    # Gated RMSNorm per value head: RMSNorm(core) * weight * SiLU(z).
    normed = op.RMSNormalization(heads(core, w.v_heads, w.d_v), weight("norm", w.norm), axis=-1, epsilon=w.eps)
    gated = op.Mul(normed, silu(heads(op.MatMul(x, weight("w_z", w.w_z)), w.v_heads, w.d_v)))
    output = op.MatMul(flat(gated), weight("w_out", w.w_out))
    return output, present_conv, present_state


# --8<-- [end:mixer]


def mixer_model(w: GatedDeltaWeights) -> onnx.ModelProto:
    """One gated-delta layer as a model: hidden_states, past_conv, past_state -> output,
    present_conv, present_state."""
    b = graph_builder("gated_delta_mixer", {"": OPSET})
    hidden = w.w_q.shape[0]
    x = b.input("hidden_states", FLOAT, ["batch", "seq", hidden])
    past_conv = b.input("past_conv", FLOAT, ["batch", w.conv_channels, w.kernel - 1])
    past_state = b.input("past_state", FLOAT, ["batch", w.v_heads, w.d_k, w.d_v])
    for value, name in zip(
        mixer_outputs(b, x, past_conv, past_state, w), ("output", "present_conv", "present_state"), strict=True
    ):
        b.add_output(value, name)
    return builder_model(b)


def zero_states(w: GatedDeltaWeights, batch: int) -> dict[str, np.ndarray]:
    return {
        "past_conv": np.zeros((batch, w.conv_channels, w.kernel - 1), np.float32),
        "past_state": np.zeros((batch, w.v_heads, w.d_k, w.d_v), np.float32),
    }


# ------------------------------------------------------------------ Mamba-2 (SSD)
@dataclass(frozen=True)
class Mamba2Weights:
    """One Mamba-2 mixer: in_proj splits into [z (I), xBC (I + 2*G*N), dt (H)]."""

    w_in: np.ndarray  # (hidden, I + conv_channels + H)
    b_in: np.ndarray | None
    conv: np.ndarray  # (C, 1, K)
    conv_bias: np.ndarray | None
    a_log: np.ndarray  # (H,)
    dt_bias: np.ndarray
    d_skip: np.ndarray  # D, (H,)
    norm: np.ndarray  # (I,)
    w_out: np.ndarray
    b_out: np.ndarray | None
    heads: int
    head_dim: int  # P: the op's d_v
    state_size: int  # N: the op's d_k
    groups: int
    eps: float
    dt_limit: tuple[float, float]

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.conv.shape[0]

    @property
    def kernel(self) -> int:
        return self.conv.shape[2]


def _bias(linear) -> np.ndarray | None:
    return None if linear.bias is None else linear.bias.detach().double().numpy()


def mamba2_weights(mixer) -> Mamba2Weights:
    """Read a transformers Mamba-2 mixer (``Mamba2Mixer`` and the hybrids' copies of it)."""
    if getattr(mixer, "activation", "silu") != "silu":
        raise UsageError(f"{type(mixer).__name__}: conv activation {mixer.activation!r}; valid: silu")
    return Mamba2Weights(
        w_in=_t(mixer.in_proj),
        b_in=_bias(mixer.in_proj),
        conv=mixer.conv1d.weight.detach().double().numpy(),
        conv_bias=_bias(mixer.conv1d),
        a_log=mixer.A_log.detach().double().numpy(),
        dt_bias=mixer.dt_bias.detach().double().numpy(),
        d_skip=mixer.D.detach().double().numpy(),
        norm=mixer.norm.weight.detach().double().numpy(),
        w_out=_t(mixer.out_proj),
        b_out=_bias(mixer.out_proj),
        heads=mixer.num_heads,
        head_dim=mixer.head_dim,
        state_size=mixer.ssm_state_size,
        groups=mixer.n_groups,
        eps=float(mixer.norm.variance_epsilon),
        dt_limit=tuple(float(x) for x in mixer.time_step_limit),
    )


# --8<-- [start:mamba2]
def mamba2_outputs(b, x: ir.Value, past_conv: ir.Value, past_state: ir.Value, w: Mamba2Weights, prefix: str = ""):
    """Mamba-2's SSD as rule ``gated``: query = C, key = B (each group repeated to its heads),
    value = dt * x, decay = dt * A per head, scale 1; then ``+ D * x``, the gated group RMSNorm
    and out_proj. The state is (B, H, N, P): transformers' ssm_state transposed."""
    op = b.op
    weight = _Constants(b, prefix)

    def linear(value: ir.Value, name: str, matrix, bias) -> ir.Value:
        out = op.MatMul(value, weight(name, matrix))
        return out if bias is None else op.Add(out, weight(f"{name}_bias", bias))

    def heads(value: ir.Value, count: int, size: int) -> ir.Value:
        return op.Reshape(value, weight.ints(f"shape_{count}x{size}", [0, 0, count, size]))

    def flat(value: ir.Value) -> ir.Value:
        return op.Reshape(value, weight.ints("shape_flat", [0, 0, -1]))

    projected = linear(x, "w_in", w.w_in, w.b_in)
    sizes = [w.inner, w.conv_channels, w.heads]
    z, xbc, dt = op.Split(projected, weight.ints("in_split", sizes), axis=2, _outputs=3)
    window = op.Concat(past_conv, op.Transpose(xbc, perm=[0, 2, 1]), axis=2)
    conv_args = [window, weight("conv", w.conv)] + ([] if w.conv_bias is None else [weight("conv_bias", w.conv_bias)])
    convolved = op.Conv(*conv_args, group=w.conv_channels, kernel_shape=[w.kernel])
    present_conv = op.Slice(
        window, weight.ints("conv_start", [1 - w.kernel]), weight.ints("conv_end", [2**62]), weight.ints("axis2", [2])
    )
    convolved = op.Transpose(op.Mul(convolved, op.Sigmoid(convolved)), perm=[0, 2, 1])  # SiLU, (B, seq, C)
    group_width = w.groups * w.state_size
    hidden, key, query = op.Split(
        convolved, weight.ints("xbc_split", [w.inner, group_width, group_width]), axis=2, _outputs=3
    )

    def per_head(value: ir.Value) -> ir.Value:  # (B, seq, G*N) -> (B, seq, H*N), group g serves H/G heads
        value = op.Unsqueeze(heads(value, w.groups, w.state_size), weight.ints("axis3", [3]))
        repeat = weight.ints("repeat", [1, 1, 1, w.heads // w.groups, 1])
        return flat(op.Expand(value, repeat))

    dt = op.Softplus(op.Add(dt, weight("dt_bias", w.dt_bias)))
    low, high = w.dt_limit
    if (low, high) != (0.0, float("inf")):
        dt = op.Clip(dt, weight("dt_min", low), weight("dt_max", high))
    decay = op.Mul(dt, weight("a", -np.exp(w.a_log)))  # (B, seq, H)
    value = flat(op.Mul(heads(hidden, w.heads, w.head_dim), op.Unsqueeze(dt, weight.ints("last", [-1]))))
    core, present_state = op.LinearAttention(
        per_head(query), per_head(key), value, past_state, decay,
        q_num_heads=w.heads, kv_num_heads=w.heads, update_rule="gated", scale=1.0, _outputs=2,
    )  # fmt: skip
    skip = op.Mul(heads(hidden, w.heads, w.head_dim), weight("d_skip", w.d_skip.reshape(w.heads, 1)))
    y = op.Add(core, flat(skip))
    # MambaRMSNormGated (norm after the gate): y * SiLU(z), RMS over each group, times the weight.
    gated = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
    group = w.inner // w.groups
    normed = op.RMSNormalization(heads(gated, w.groups, group), weight("ones", np.ones(group)), axis=-1, epsilon=w.eps)
    output = linear(op.Mul(flat(normed), weight("norm", w.norm)), "w_out", w.w_out, w.b_out)
    return output, present_conv, present_state


# --8<-- [end:mamba2]


def mamba2_model(w: Mamba2Weights) -> onnx.ModelProto:
    b = graph_builder("mamba2_mixer", {"": OPSET})
    x = b.input("hidden_states", FLOAT, ["batch", "seq", w.w_in.shape[0]])
    past_conv = b.input("past_conv", FLOAT, ["batch", w.conv_channels, w.kernel - 1])
    past_state = b.input("past_state", FLOAT, ["batch", w.heads, w.state_size, w.head_dim])
    outputs = mamba2_outputs(b, x, past_conv, past_state, w)
    for value, name in zip(outputs, ("output", "present_conv", "present_state"), strict=True):
        b.add_output(value, name)
    return builder_model(b)
