"""The primitive form: the MoE block as a model builder would emit it, with no MoE op.

GroupedMatMul (RFC onnx/onnx#8193) for the two expert projections, and standard ops for
the rest: MatMul router, Softmax or Sigmoid, TopK, GatherElements (selection-only bias),
ReduceSum/Div renormalization, SwiGLU-28 or ``x * Sigmoid(alpha * x)`` for the gated
activation, and a Mul + ReduceSum combine. Built with onnxscript's graph builder.

SwiGLU-28 applies to gated SiLU with concatenated halves and no clamp (its ``Y =
Swish_alpha(A) * B`` has no limit). onnxruntime 1.32 CPU has no Swish-24 kernel, which
SwiGLU-28's function body calls, so ``swiglu28=False`` spells it out for ORT CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN, stamp
from proposals.moe.grouped_matmul import functions
from proposals.moe.schema import OPSET, resolve

SWIGLU_OPSET = 28


def _activation(op, h, a: Mapping[str, object], swiglu28: bool):
    alpha = a["activation_alpha"]

    def silu(x):
        inner = x if alpha == 1.0 else op.Mul(x, op.Constant(value_float=alpha))
        return op.Mul(x, op.Sigmoid(inner))

    if not a["gated"]:
        if a["activation"] == "relu":
            return op.Relu(h)
        if a["activation"] == "silu":
            return silu(h)
        if a["activation"] == "gelu":
            return op.Gelu(h)
        return op.Gelu(h, approximate="tanh")
    if a["activation"] != "silu":
        raise UsageError(f"the primitive builder spells gated silu only, not gated {a['activation']}")
    if a["gate_up_layout"] == "concatenated":
        gate, up = op.Split(h, axis=-1, num_outputs=2, _outputs=2)
    else:
        big = op.Constant(value_ints=[np.iinfo(np.int64).max])
        axis, step = op.Constant(value_ints=[-1]), op.Constant(value_ints=[2])
        gate = op.Slice(h, op.Constant(value_ints=[0]), big, axis, step)
        up = op.Slice(h, op.Constant(value_ints=[1]), big, axis, step)
    if "swiglu_limit" in a:
        limit = op.Constant(value_float=a["swiglu_limit"])
        gate, up = op.Min(gate, limit), op.Clip(up, op.Constant(value_float=-a["swiglu_limit"]), limit)
    if a["activation_beta"] != 0.0:
        up = op.Add(up, op.Constant(value_float=a["activation_beta"]))
    if swiglu28 and a["gate_up_layout"] == "concatenated" and "swiglu_limit" not in a:
        return op.SwiGLU(gate, up, alpha=alpha)
    return op.Mul(silu(gate), up)


# --8<-- [start:primitive]
def _route(op, x, w: Mapping[str, ir.Value], a: Mapping[str, object]):
    """(scores [T, E], routing weights [T, k], expert indices [T, k])."""
    logits = op.MatMul(x, w["router_weight"])
    if "router_bias" in w:
        logits = op.Add(logits, w["router_bias"])
    scores = op.Softmax(logits, axis=-1) if a["scoring"] == "softmax" else op.Sigmoid(logits)
    k = op.Constant(value_ints=[a["k"]])
    if "selection_bias" in w:  # select on biased scores, weigh with the unbiased ones
        _, idx = op.TopK(op.Add(scores, w["selection_bias"]), k, axis=-1, _outputs=2)
        weights = op.GatherElements(scores, idx, axis=1)
    else:
        weights, idx = op.TopK(scores, k, axis=-1, _outputs=2)
    if a["normalize_routing_weights"]:
        weights = op.Div(weights, op.ReduceSum(weights, op.Constant(value_ints=[-1]), keepdims=1))
    if a["routed_scaling_factor"] != 1.0:
        weights = op.Mul(weights, op.Constant(value_float=a["routed_scaling_factor"]))
    return scores, weights, idx


def _moe(op, x, w: Mapping[str, ir.Value], a: Mapping[str, object], swiglu28: bool):
    """x: [T, H] -> [T, H], the routed experts plus the shared expert."""
    _, weights, idx = _route(op, x, w, a)
    h1 = op.GroupedMatMul(x, w["fc1_weight"], idx, *_bias(w, "fc1_bias"), _domain=PROPOSAL_DOMAIN)  # [T, k, F*I]
    act = _activation(op, h1, a, swiglu28)
    rows = op.Reshape(act, op.Concat(op.Constant(value_ints=[-1]), op.Shape(act, start=-1), axis=0))
    slot_ids = op.Reshape(idx, op.Constant(value_ints=[-1, 1]))
    h2 = op.GroupedMatMul(rows, w["fc2_weight"], slot_ids, *_bias(w, "fc2_bias"), _domain=PROPOSAL_DOMAIN)
    per_slot = op.Reshape(h2, op.Concat(op.Shape(weights), op.Shape(x, start=-1), axis=0))  # [T, k, H]
    weighted = op.Mul(per_slot, op.Unsqueeze(weights, op.Constant(value_ints=[2])))
    y = op.ReduceSum(weighted, op.Constant(value_ints=[1]), keepdims=0)
    return _plus_shared(op, x, y, w, a, swiglu28)


def _plus_shared(op, x, y, w: Mapping[str, ir.Value], a: Mapping[str, object], swiglu28: bool):
    if "shared_fc1_weight" in w:
        shared = op.MatMul(_activation(op, op.MatMul(x, w["shared_fc1_weight"]), a, swiglu28), w["shared_fc2_weight"])
        if "shared_gate_weight" in w:
            shared = op.Mul(shared, op.Sigmoid(op.MatMul(x, w["shared_gate_weight"])))
        y = op.Add(y, shared)
    return y


# --8<-- [end:primitive]


def _bias(w: Mapping[str, ir.Value], name: str) -> list[ir.Value]:
    return [w[name]] if name in w else []


def primitive_model(
    arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object], *, swiglu28: bool = False
) -> onnx.ModelProto:
    """The primitive form of one MoE block; ``arrays`` holds the MoE op's inputs by name
    (weights in the op's ``[in, out]`` layout). X becomes ``[T, H]`` with symbolic T."""
    a = resolve(attrs)
    if a["n_group"] > 1 or a["apply_weight_on_input"]:
        raise UsageError("the primitive builder does not spell group-limited top-k or input-side routing weights")
    opset = SWIGLU_OPSET if swiglu28 else OPSET
    dtype = ir.DataType.from_numpy(arrays["X"].dtype)
    x = ir.Value(name="X", type=ir.TensorType(dtype), shape=ir.Shape(["T", arrays["X"].shape[-1]]))
    y = ir.Value(name="Y", type=ir.TensorType(dtype), shape=ir.Shape(["T", arrays["X"].shape[-1]]))

    def trace(op, x):
        w = {n: op.initializer(ir.tensor(v), name=n) for n, v in arrays.items() if n != "X" and v is not None}
        return _moe(op, x, w, a, swiglu28)

    graph = onnxscript.build_graph(trace, [x], [y], opset_imports={"": opset, PROPOSAL_DOMAIN: 1}, name="moe_primitive")
    bias = "fc1_bias" in arrays or "fc2_bias" in arrays
    model = ir.Model(graph, ir_version=10)
    for function in map(ir.serde.deserialize_function, functions(bias=bias)):
        function.opset_imports[""] = opset  # a function's ai.onnx version must be the model's
        model.functions[function.identifier()] = function
    proto = ir.serde.serialize_model(model)
    if bias and not ("fc1_bias" in arrays and "fc2_bias" in arrays):
        raise UsageError("the primitive builder needs both expert biases or neither (one GroupedMatMul body)")
    return stamp(proto)


# --8<-- [start:dense]
def _dense_moe(op, x, w: Mapping[str, ir.Value], a: Mapping[str, object]):
    """x: [T, H] -> [T, H]: every expert on every token ([E, T, ...] batched MatMuls),
    weighted by the top-k routing weights scattered into a [T, E] mask (zero elsewhere)."""
    scores, weights, idx = _route(op, x, w, a)
    zeros = op.ConstantOfShape(op.Shape(scores), value=ir.tensor(np.zeros(1, w["router_weight"].dtype.numpy())))
    mask = op.ScatterElements(zeros, idx, weights, axis=1)  # [T, E]
    h1 = op.MatMul(x, w["fc1_weight"])  # [E, T, F*I]
    if "fc1_bias" in w:
        h1 = op.Add(h1, w["fc1_bias"])  # bias [E, 1, F*I]
    h2 = op.MatMul(_activation(op, h1, a, swiglu28=False), w["fc2_weight"])  # [E, T, H]
    if "fc2_bias" in w:
        h2 = op.Add(h2, w["fc2_bias"])
    per_expert = op.Unsqueeze(op.Transpose(mask, perm=[1, 0]), op.Constant(value_ints=[2]))  # [E, T, 1]
    y = op.ReduceSum(op.Mul(h2, per_expert), op.Constant(value_ints=[0]), keepdims=0)
    return _plus_shared(op, x, y, w, a, swiglu28=False)


def _unrolled_moe(op, x, w: Mapping[str, ir.Value], a: Mapping[str, object], experts: int):
    """The same, one MLP per expert masked by ``Equal(indices, e)`` and summed by an Add
    chain: the loop mobius-onnx 0.1.0 emits (``MoELayer.forward``)."""
    _, weights, idx = _route(op, x, w, a)
    y = None
    for e in range(experts):
        h1 = op.MatMul(x, w[f"fc1_weight.{e}"])
        if f"fc1_bias.{e}" in w:
            h1 = op.Add(h1, w[f"fc1_bias.{e}"])
        h2 = op.MatMul(_activation(op, h1, a, swiglu28=False), w[f"fc2_weight.{e}"])
        if f"fc2_bias.{e}" in w:
            h2 = op.Add(h2, w[f"fc2_bias.{e}"])
        chosen = op.CastLike(op.Equal(idx, op.Constant(value_int=e)), weights)
        contribution = op.Mul(h2, op.ReduceSum(op.Mul(weights, chosen), op.Constant(value_ints=[-1]), keepdims=1))
        y = contribution if y is None else op.Add(y, contribution)
    return _plus_shared(op, x, y, w, a, swiglu28=False)


# --8<-- [end:dense]


def dense_model(
    arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object], *, unrolled: bool = False
) -> onnx.ModelProto:
    """The dense all-experts form of one MoE block, standard ops only (``arrays`` as for
    :func:`primitive_model`). ``unrolled``: one MLP per expert (mobius-onnx's loop)
    instead of ``[E, T, ...]`` batched MatMuls."""
    a = resolve(attrs)
    if a["n_group"] > 1 or a["apply_weight_on_input"]:
        raise UsageError("the dense builder does not spell group-limited top-k or input-side routing weights")
    arrays = {n: v for n, v in arrays.items() if v is not None}
    experts = {n: arrays.pop(n) for n in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias") if n in arrays}
    count = experts["fc1_weight"].shape[0]
    if unrolled:
        arrays |= {f"{n}.{e}": v[e] for n, v in experts.items() for e in range(count)}
    else:
        arrays |= {n: v[:, None, :] if n.endswith("bias") else v for n, v in experts.items()}  # biases [E, 1, N]
    dtype = ir.DataType.from_numpy(arrays["X"].dtype)
    x = ir.Value(name="X", type=ir.TensorType(dtype), shape=ir.Shape(["T", arrays["X"].shape[-1]]))
    y = ir.Value(name="Y", type=ir.TensorType(dtype), shape=ir.Shape(["T", arrays["X"].shape[-1]]))

    def trace(op, x):
        w = {n: op.initializer(ir.tensor(v), name=n) for n, v in arrays.items() if n != "X"}
        return _unrolled_moe(op, x, w, a, count) if unrolled else _dense_moe(op, x, w, a)

    graph = onnxscript.build_graph(trace, [x], [y], opset_imports={"": OPSET}, name="moe_dense")
    return stamp(ir.serde.serialize_model(ir.Model(graph, ir_version=10)))
