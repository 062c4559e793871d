"""A ``torch.onnx.export`` path that emits the MoE function op.

1. ``swap_moe_blocks(model)`` replaces every supported transformers MoE block by a
   :class:`MoEFunctionOpBlock` that holds the op's inputs (in the op's layout) and
   calls one opaque ``torch.ops.genai_moe.moe``. ``torch.export`` sees a single op with
   a static output shape instead of data-dependent expert loops or ``grouped_mm``.
2. ``export(model, args)`` exports with a custom translation table that maps the
   custom op to ``org.onnx.genai.proposals.MoE`` and appends the function body
   (model-local functions) so any ONNX runtime can run the model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnxscript import values

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN, stamp
from generator.opspec import register_onnx_schema
from proposals.moe.body import build_function
from proposals.moe.hf import block_arrays, is_moe_block
from proposals.moe.reference import moe
from proposals.moe.schema import INPUT_NAMES, OPSET, SCHEMA, resolve

_OPTIONAL = {p.name for p in SCHEMA.inputs if p.optional}


# --8<-- [start:custom_op]
@torch.library.custom_op("genai_moe::moe", mutates_args=())
def moe_op(
    X: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor | None,
    selection_bias: torch.Tensor | None,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    shared_fc1_weight: torch.Tensor | None,
    shared_fc2_weight: torch.Tensor | None,
    shared_gate_weight: torch.Tensor | None,
    attrs: str,
) -> torch.Tensor:
    """Eager run: the numpy reference (slow, exact); attributes travel as JSON."""
    tensors = dict(
        zip(
            INPUT_NAMES,
            (
                X,
                router_weight,
                router_bias,
                selection_bias,
                fc1_weight,
                fc1_bias,
                fc2_weight,
                fc2_bias,
                shared_fc1_weight,
                shared_fc2_weight,
                shared_gate_weight,
            ),
            strict=True,
        )
    )
    arrays = {n: t.detach().numpy() for n, t in tensors.items() if t is not None}
    return torch.from_numpy(moe(arrays, **json.loads(attrs)))


@moe_op.register_fake
def _(X, *args, **kwargs):
    return torch.empty_like(X)  # Y has X's shape: nothing data-dependent escapes the op


# --8<-- [end:custom_op]


class MoEFunctionOpBlock(torch.nn.Module):
    """Stands in for a transformers MoE block; returns what the block returned
    (GPT-OSS: ``(hidden_states, None)``)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        arrays, attrs = block_arrays(block)
        self.attrs = json.dumps(resolve(attrs), sort_keys=True)
        self.present = tuple(n for n in INPUT_NAMES[1:] if n in arrays)
        for name in self.present:
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(arrays[name])))
        self.tuple_output = type(block).__name__ == "GptOssMLP"

    def forward(self, hidden_states: torch.Tensor):
        inputs = [getattr(self, n) if n in self.present else None for n in INPUT_NAMES[1:]]
        out = moe_op(hidden_states, *inputs, self.attrs)
        return (out, None) if self.tuple_output else out


def swap_moe_blocks(model: torch.nn.Module) -> int:
    """Replace every supported MoE block of ``model`` in place; returns how many."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if is_moe_block(child)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, MoEFunctionOpBlock(child))
    return len(swaps)


# --8<-- [start:translation]
def _translate(
    X,
    router_weight,
    router_bias,
    selection_bias,
    fc1_weight,
    fc1_bias,
    fc2_weight,
    fc2_bias,
    shared_fc1_weight,
    shared_fc2_weight,
    shared_gate_weight,
    attrs: str,
):
    """``genai_moe::moe`` -> one ``org.onnx.genai.proposals.MoE`` node."""
    genai = values.Opset(PROPOSAL_DOMAIN, 1)
    return genai.MoE(
        X,
        router_weight,
        router_bias,
        selection_bias,
        fc1_weight,
        fc1_bias,
        fc2_weight,
        fc2_bias,
        shared_fc1_weight,
        shared_fc2_weight,
        shared_gate_weight,
        **json.loads(attrs),
    )


def export(model: torch.nn.Module, args: tuple, **kwargs) -> onnx.ModelProto:
    """``torch.onnx.export`` of a model whose MoE blocks were swapped, with the function
    body of the (single) MoE configuration appended as model-local functions."""
    register_onnx_schema(SCHEMA)
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
        optimize=True,
        custom_translation_table={torch.ops.genai_moe.moe.default: _translate},
        **kwargs,
    )
    proto = program.model_proto
    return attach_functions(proto)


# --8<-- [end:translation]


def attach_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Append the MoE body for the MoE nodes' attribute set and present inputs."""
    nodes = [n for n in proto.graph.node if (n.domain, n.op_type) == (SCHEMA.domain, SCHEMA.name)]
    if not nodes:
        raise UsageError("the exported model has no MoE node; call swap_moe_blocks(model) first")
    configs = {(_attrs_key(n), _present(n)) for n in nodes}
    if len(configs) > 1:
        raise UsageError(
            f"{len(configs)} different MoE configurations in one model; "
            "one FunctionProto per (domain, name) needs a single configuration"
        )
    ((attrs, present),) = configs
    model = ir.from_proto(proto)
    for function in map(ir.serde.deserialize_function, build_function(dict(attrs), present)):
        model.functions[function.identifier()] = function
    model.opset_imports.setdefault(PROPOSAL_DOMAIN, 1)
    return stamp(ir.to_proto(model))


def _attrs_key(node: onnx.NodeProto) -> tuple:
    items = []
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        items.append((attr.name, value.decode() if isinstance(value, bytes) else value))
    return tuple(sorted(items))


def _present(node: onnx.NodeProto) -> tuple[str, ...]:
    return tuple(name for name, value in zip(INPUT_NAMES, node.input, strict=False) if value)
