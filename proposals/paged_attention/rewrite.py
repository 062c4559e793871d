"""Deployment-time rewrite: linear-buffer KV cache (TensorScatter + Attention) -> paged.

:class:`LinearToPaged` is an onnx-ir pass. Like OpenVINO's
``ov::pass::SDPAToPagedAttention`` it changes the model's signature: each ``past_*``
cache input becomes a block pool ``key_cache.N`` / ``value_cache.N`` of shape
[num_blocks, block_size, <cache dims other than batch and sequence>], each ``present_*``
output becomes the updated pool ``key_cache_out.N`` / ``value_cache_out.N``,
``write_indices`` goes away unless something else reads it (a decoder computing its
positions from it), and two inputs arrive:

* ``block_table`` int64 [batch, max_blocks]: physical block of each logical block;
* ``slot_mapping`` int64 [batch, q_len]: flat slot (block * block_size + offset) of each
  new token.

``nonpad_kv_seqlen`` keeps its meaning (KV length per sequence after this step).

Match conditions, checked for every standard-domain ``Attention`` node (layer N is the
N-th Attention in graph order); a model that breaks one is refused with a UsageError
naming it:

1. its ``nonpad_kv_seqlen`` input (index 6) is given and its ``attn_mask`` (index 3) is
   not: unused block slots are masked by length, and a mask sized to the linear cache
   has no paged meaning;
2. its K and V inputs are each the output of a ``TensorScatter`` with ``mode="linear"``;
3. that TensorScatter's cache input is a graph input whose dims other than batch (0)
   and the scatter axis are static (they size the pool);
4. the TensorScatter's output is read by nothing but that Attention and the graph
   outputs (where it is the ``present_*`` cache).

Each matched TensorScatter becomes ScatterND (write through slot_mapping, split into
(block, offset) pairs, straight into the pool, so the pool can be updated in place) ->
Gather (read by block_table) -> Reshape, with Transposes where the cache's sequence axis
is not axis 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnxscript import TapeBuilder

from generator.errors import UsageError
from generator.onnx_build import stamp

INT64 = ir.DataType.INT64
BLOCK_TABLE = "block_table"
SLOT_MAPPING = "slot_mapping"
KV_INPUT = {1: "key", 2: "value"}  # Attention input index -> pool name


@dataclass(frozen=True)
class CacheSite:
    """One TensorScatter that feeds Attention's K or V."""

    scatter: ir.Node
    attention: ir.Node
    kind: str  # "key" or "value"
    layer: int
    axis: int  # the cache's sequence axis

    @property
    def cache(self) -> ir.Value:
        """The ``past_*`` graph input."""
        return self.scatter.inputs[0]

    @property
    def present(self) -> ir.Value:
        """The ``present_*`` cache: Attention's K or V."""
        return self.scatter.outputs[0]

    @property
    def head_dims(self) -> list[int]:
        """The cache's dims other than batch and sequence (static, checked by find_sites)."""
        return [d for i, d in enumerate(self.cache.shape) if i not in (0, self.axis)]


def _is_standard(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def find_sites(graph: ir.Graph) -> list[CacheSite]:
    """The TensorScatter nodes whose output is an Attention's K or V, checked for the pattern."""
    attentions = [n for n in graph if _is_standard(n, "Attention")]
    if not attentions:
        raise UsageError("no Attention node found; the rewrite needs TensorScatter + Attention-24")
    sites = []
    for layer, attention in enumerate(attentions):
        if _input(attention, 6) is None:
            raise UsageError(
                f"Attention {attention.name!r} has no nonpad_kv_seqlen input; the paged form "
                "masks unused block slots with it (Attention-24 external-cache pattern)"
            )
        if _input(attention, 3) is not None:
            raise UsageError(
                f"Attention {attention.name!r} has an attn_mask sized to the linear cache; "
                "only is_causal + nonpad_kv_seqlen models can be rewritten"
            )
        for index, kind in KV_INPUT.items():
            scatter = attention.inputs[index].producer()
            if scatter is None or not _is_standard(scatter, "TensorScatter"):
                raise UsageError(
                    f"Attention {attention.name!r} input {index} ({kind}) is not a "
                    "TensorScatter output; valid: the kv_cache.md linear-buffer pattern"
                )
            if scatter.attributes.get_string("mode", "linear") != "linear":
                raise UsageError(
                    f"TensorScatter {scatter.name!r} is circular; only linear buffers can be paged by this rewrite"
                )
            cache = scatter.inputs[0]
            if not cache.is_graph_input():
                raise UsageError(f"TensorScatter {scatter.name!r} cache is not a graph input")
            axis = scatter.attributes.get_int("axis", -2) % len(cache.shape)
            if any(not isinstance(d, int) for i, d in enumerate(cache.shape) if i not in (0, axis)):
                raise UsageError(f"cache {cache.name!r} needs static head dims to size the pool")
            if any(node is not attention for node, _ in scatter.outputs[0].uses()):
                raise UsageError(f"TensorScatter {scatter.name!r} output is read by more than its Attention")
            sites.append(CacheSite(scatter, attention, kind, layer, axis))
    return sites


def _ints(op: TapeBuilder, values: list[int]) -> ir.Value:
    return op.Constant(value=ir.tensor(values, dtype=INT64))


# --8<-- [start:paged_nodes]
def _paged_read(op: TapeBuilder, site: CacheSite, pool: ir.Value, slots: ir.Value, block_table: ir.Value):
    """ScatterND write through slot_mapping, then Gather read by block_table.

    ``slots`` holds (block, offset) pairs [T, 2], so ScatterND writes the pool itself and
    its output is the updated pool: nothing sits between the pool input and ScatterND, and
    an IOBinding that binds the pool input and output to one buffer updates it in place
    (a Reshape there would make onnxruntime copy the whole pool every run).
    Returns (updated pool, the cache Attention reads in the TensorScatter output's layout).
    """
    rank = len(site.cache.shape)
    perm = [0, site.axis] + [i for i in range(1, rank) if i != site.axis]  # sequence axis to 1
    update = site.scatter.inputs[1]
    if perm != list(range(rank)):
        update = op.Transpose(update, perm=perm)
    pool_out = op.ScatterND(pool, slots, op.Reshape(update, _ints(op, [-1, *site.head_dims])))
    blocks = op.Gather(pool_out, block_table, axis=0)  # [B, max_blocks, block_size, ...]
    sequence = op.Reshape(blocks, _ints(op, [0, -1, *site.head_dims]))
    if perm != list(range(rank)):
        sequence = op.Transpose(sequence, perm=[perm.index(i) for i in range(rank)])
    return pool_out, sequence


# --8<-- [end:paged_nodes]


class LinearToPaged(onnx_ir.passes.InPlacePass):
    """The paged form of a linear-buffer model (see the module docstring for what matches)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__()
        if num_blocks < 1 or block_size < 1:
            raise UsageError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        graph = model.graph
        sites = find_sites(graph)
        first = sites[0]
        update_shape = first.scatter.inputs[1].shape
        q_len = update_shape[first.axis] if update_shape is not None else "q_len"
        batch = first.cache.shape[0]
        block_table = ir.val(BLOCK_TABLE, INT64, [batch, "max_blocks"])
        slot_mapping = ir.val(SLOT_MAPPING, INT64, [batch, q_len])
        op = TapeBuilder()
        flat = op.Unsqueeze(op.Reshape(slot_mapping, _ints(op, [-1])), _ints(op, [-1]))  # [T, 1]
        size = _ints(op, [self.block_size])
        slots = op.Concat(op.Div(flat, size), op.Mod(flat, size), axis=-1)  # [T, 2]: block, offset
        graph.insert_before(first.scatter, op.nodes)
        for site in sites:
            shape = [self.num_blocks, self.block_size, *site.head_dims]
            pool = ir.val(f"{site.kind}_cache.{site.layer}", site.cache.dtype, shape)
            graph.inputs[graph.inputs.index(site.cache)] = pool
            op = TapeBuilder()
            pool_out, sequence = _paged_read(op, site, pool, slots, block_table)
            pool_out.name = f"{site.kind}_cache_out.{site.layer}"
            pool_out.type, pool_out.shape = site.cache.type, ir.Shape(shape)
            graph.insert_before(site.scatter, op.nodes)
            present = site.present
            graph.outputs[graph.outputs.index(present)] = pool_out
            present.replace_all_uses_with(sequence)
            graph.remove(site.scatter, safe=True)
        unused = [v for v in graph.inputs if not v.uses() and not v.is_graph_output()]
        for value in unused:
            graph.inputs.remove(value)
        graph.inputs.extend([block_table, slot_mapping])
        graph.name = f"{graph.name}_paged"
        return onnx_ir.passes.PassResult(model, modified=True)


def to_paged(model: onnx.ModelProto, num_blocks: int, block_size: int) -> onnx.ModelProto:
    """Run :class:`LinearToPaged` on a model proto: the paged form, stamped."""
    rewrite = LinearToPaged(num_blocks, block_size)
    # Shapes inferred first, so slot_mapping can declare the new tokens' dims.
    ir_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    ir_model = rewrite(ir_model).model  # run alone: Sequential would wrap its UsageError
    ir_model = onnx_ir.passes.common.NameFixPass()(ir_model).model  # names for the new values
    out = ir.serde.serialize_model(ir_model)
    del out.graph.value_info[:]  # the inferred shapes of the linear form, some now stale
    return stamp(out)
