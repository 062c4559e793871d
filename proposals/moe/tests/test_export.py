"""torch.onnx.export: the plain export fails on transformers' grouped_mm; with the MoE
blocks swapped for the custom op, whole tiny causal LMs export with MoE nodes and
their logits match transformers on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from generator.ort import session
from proposals.moe.export import export, swap_moe_blocks
from proposals.moe.families import CAUSAL_LM, Logits, tiny_causal_lm
from proposals.moe.schema import SCHEMA


def _logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Logits(model)(torch.from_numpy(ids)).numpy()


@pytest.mark.parametrize("family", sorted(CAUSAL_LM))
def test_whole_model_exports_and_matches(family: str) -> None:
    model = tiny_causal_lm(family)
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 64, (2, 6)), rng.randint(0, 64, (3, 1))]  # export sample: no 1s
    expected = [_logits(model, ids) for ids in prompts]
    assert swap_moe_blocks(model) == 2
    seq = torch.export.Dim("seq", min=1, max=32)
    batch = torch.export.Dim("batch", min=1, max=4)
    proto = export(Logits(model), (torch.from_numpy(prompts[0]),), dynamic_shapes=({0: batch, 1: seq},))
    onnx.checker.check_model(proto, full_check=True)
    moe_nodes = [n for n in proto.graph.node if n.op_type == SCHEMA.name]
    assert len(moe_nodes) == 2 and {f.name for f in proto.functions} >= {"MoE", "GroupedMatMul"}
    runner = session(proto, threads=1)
    for ids, want in zip(prompts, expected, strict=True):
        got = runner.run(None, {proto.graph.input[0].name: ids})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_plain_export_fails_on_grouped_mm() -> None:
    """The failure the swap fixes (transformers 5.24 default experts: grouped_mm)."""
    model = tiny_causal_lm("mixtral")
    ids = torch.zeros((1, 4), dtype=torch.int64)
    with pytest.raises(Exception) as info:
        torch.onnx.export(Logits(model), (ids,), dynamo=True, opset_version=21, verbose=False)
    assert "grouped_mm_fallback" in str(info.value.__cause__)
