"""Deployment-time rewrite: linear-buffer KV cache (TensorScatter + Attention) -> paged.

Like OpenVINO's ``ov::pass::SDPAToPagedAttention`` it changes the model's signature:
each ``past_*`` cache input becomes a block pool ``key_cache.N`` / ``value_cache.N``
of shape [num_blocks, block_size, <cache dims other than batch and sequence>], each
``present_*`` output becomes the updated pool ``key_cache_out.N`` / ``value_cache_out.N``,
``write_indices`` goes away and two inputs arrive:

* ``block_table`` int64 [batch, max_blocks]: physical block of each logical block;
* ``slot_mapping`` int64 [batch, q_len]: flat slot (block * block_size + offset) of each
  new token.

``nonpad_kv_seqlen`` keeps its meaning (KV length per sequence after this step).
Every TensorScatter output feeding Attention's K or V is replaced by
ScatterND (write through slot_mapping) -> Gather (read by block_table) -> Reshape,
with Transposes where the cache's sequence axis is not axis 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from generator.errors import UsageError
from generator.onnx_build import stamp

BLOCK_TABLE = "block_table"
SLOT_MAPPING = "slot_mapping"
KV_INPUT = {1: "key", 2: "value"}  # Attention input index -> pool name


@dataclass(frozen=True)
class CacheSite:
    """One TensorScatter that feeds Attention's K or V."""

    scatter: onnx.NodeProto
    kind: str  # "key" or "value"
    layer: int
    cache: onnx.ValueInfoProto  # the past_* graph input
    axis: int


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _static_dims(info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def find_sites(model: onnx.ModelProto) -> list[CacheSite]:
    """The TensorScatter nodes whose output is an Attention's K or V, checked for the pattern."""
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    producers = {out: node for node in graph.node for out in node.output}
    sites: list[CacheSite] = []
    attentions = [n for n in graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions:
        raise UsageError("no Attention node found; the rewrite needs TensorScatter + Attention-24")
    for layer, attention in enumerate(attentions):
        if len(attention.input) < 7 or not attention.input[6]:
            raise UsageError(
                f"Attention {attention.name!r} has no nonpad_kv_seqlen input; the paged form "
                "masks unused block slots with it (Attention-24 external-cache pattern)"
            )
        if len(attention.input) > 3 and attention.input[3]:
            raise UsageError(
                f"Attention {attention.name!r} has an attn_mask sized to the linear cache; "
                "only is_causal + nonpad_kv_seqlen models can be rewritten"
            )
        for index, kind in KV_INPUT.items():
            scatter = producers.get(attention.input[index])
            if scatter is None or scatter.op_type != "TensorScatter":
                raise UsageError(
                    f"Attention {attention.name!r} input {index} ({kind}) is not a "
                    "TensorScatter output; valid: the kv_cache.md linear-buffer pattern"
                )
            if _attr(scatter, "mode", b"linear") not in (b"linear", "linear"):
                raise UsageError(
                    f"TensorScatter {scatter.name!r} is circular; only linear buffers can be paged by this rewrite"
                )
            cache = inputs.get(scatter.input[0])
            if cache is None:
                raise UsageError(f"TensorScatter {scatter.name!r} cache is not a graph input")
            rank = len(cache.type.tensor_type.shape.dim)
            axis = _attr(scatter, "axis", -2) % rank
            if any(d is None for i, d in enumerate(_static_dims(cache)) if i not in (0, axis)):
                raise UsageError(f"cache {cache.name!r} needs static head dims to size the pool")
            sites.append(CacheSite(scatter, kind, layer, cache, axis))
    return sites


# --8<-- [start:paged_nodes]
def _paged_nodes(site: CacheSite, pool: str, pool_out: str, present: str) -> list[onnx.NodeProto]:
    """ScatterND write through slot_mapping, then Gather read by block_table."""
    rank = len(site.cache.type.tensor_type.shape.dim)
    rest = [d for i, d in enumerate(_static_dims(site.cache)) if i not in (0, site.axis)]
    perm = [0, site.axis] + [i for i in range(1, rank) if i != site.axis]
    inverse = [perm.index(i) for i in range(rank)]
    p = f"paged_{site.kind}_{site.layer}_"
    const = [
        helper.make_node(
            "Constant",
            [],
            [p + "rows_shape"],
            value=helper.make_tensor(p + "rows_shape", TensorProto.INT64, [rank - 1], [-1, *rest]),
        ),
        helper.make_node(
            "Constant",
            [],
            [p + "seq_shape"],
            value=helper.make_tensor(p + "seq_shape", TensorProto.INT64, [rank], [0, -1, *rest]),
        ),
    ]
    update = site.scatter.input[1]
    token_major = update
    nodes = list(const)
    if perm != list(range(rank)):
        token_major = p + "update_token_major"
        nodes.append(helper.make_node("Transpose", [update], [token_major], perm=perm))
    nodes += [
        helper.make_node("Reshape", [token_major, p + "rows_shape"], [p + "update_rows"]),
        helper.make_node("Reshape", [pool, p + "rows_shape"], [p + "pool_rows"]),
        helper.make_node("ScatterND", [p + "pool_rows", "paged_slots", p + "update_rows"], [p + "written"]),
        helper.make_node("Reshape", [p + "written", "paged_pool_shape_" + pool], [pool_out]),
        helper.make_node("Gather", [pool_out, BLOCK_TABLE], [p + "blocks"], axis=0),
    ]
    seq = p + "sequence" if perm != list(range(rank)) else present
    nodes.append(helper.make_node("Reshape", [p + "blocks", p + "seq_shape"], [seq]))
    if seq != present:
        nodes.append(helper.make_node("Transpose", [seq], [present], perm=inverse))
    nodes.insert(0, helper.make_node("Shape", [pool], ["paged_pool_shape_" + pool]))
    return nodes


# --8<-- [end:paged_nodes]
def to_paged(model: onnx.ModelProto, num_blocks: int, block_size: int) -> onnx.ModelProto:
    """The paged form of a linear-buffer model (see the module docstring)."""
    if num_blocks < 1 or block_size < 1:
        raise UsageError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
    sites = find_sites(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_scatter = {id(s.scatter): s for s in sites}
    new_nodes: list[onnx.NodeProto] = [
        helper.make_node("Constant", [], ["paged_minus_one"], value_ints=[-1]),
        helper.make_node("Reshape", [SLOT_MAPPING, "paged_minus_one"], ["paged_slots_flat"]),
        helper.make_node("Unsqueeze", ["paged_slots_flat", "paged_minus_one"], ["paged_slots"]),
    ]
    renamed_inputs: dict[str, onnx.ValueInfoProto] = {}
    renamed_outputs: dict[str, tuple[str, onnx.ValueInfoProto]] = {}
    for node in model.graph.node:
        site = by_scatter.get(id(node))
        if site is None:
            new_nodes.append(node)
            continue
        rest = [d for i, d in enumerate(_static_dims(site.cache)) if i not in (0, site.axis)]
        pool, pool_out = f"{site.kind}_cache.{site.layer}", f"{site.kind}_cache_out.{site.layer}"
        elem = site.cache.type.tensor_type.elem_type
        shape = [num_blocks, block_size, *rest]
        renamed_inputs[site.cache.name] = helper.make_tensor_value_info(pool, elem, shape)
        renamed_outputs[node.output[0]] = (
            pool_out,
            helper.make_tensor_value_info(pool_out, elem, shape),
        )
        new_nodes += _paged_nodes(site, pool, pool_out, node.output[0])
    del graph.node[:]
    graph.node.extend(new_nodes)

    used = {name for node in graph.node for name in node.input}
    kept_inputs = []
    for info in model.graph.input:
        if info.name in renamed_inputs:
            kept_inputs.append(renamed_inputs[info.name])
        elif info.name in used:
            kept_inputs.append(info)
    first_update = sites[0].scatter.input[1]
    batch, q_len = _batch_and_len(model, sites[0])
    kept_inputs += [
        helper.make_tensor_value_info(BLOCK_TABLE, TensorProto.INT64, [batch, "max_blocks"]),
        helper.make_tensor_value_info(SLOT_MAPPING, TensorProto.INT64, [batch, q_len]),
    ]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    outputs = []
    for info in model.graph.output:
        if info.name in renamed_outputs:
            outputs.append(renamed_outputs[info.name][1])
        else:
            outputs.append(info)
    del graph.output[:]
    graph.output.extend(outputs)
    stale = set(renamed_inputs) | set(renamed_outputs) | {first_update}
    keep_info = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)
    graph.name = model.graph.name + "_paged"
    return stamp(out)


def _batch_and_len(model: onnx.ModelProto, site: CacheSite) -> tuple[str | int, str | int]:
    """Batch and sequence dims of the new tokens (for slot_mapping's declared shape)."""
    infos = {v.name: v for v in [*model.graph.input, *model.graph.value_info]}
    update = infos.get(site.scatter.input[1])
    if update is None:
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info]}
        update = infos.get(site.scatter.input[1])
    if update is None:
        return "batch", "q_len"
    dims = update.type.tensor_type.shape.dim
    pick = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "dim") for d in dims]
    return pick[0], pick[site.axis]
