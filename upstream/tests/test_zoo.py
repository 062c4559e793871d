"""upstream/zoo/ is the committed MoE zoo in the opset-29 form, byte for byte what
``python -m upstream.zoo`` writes from it, and that form calls ai.onnx GroupedMatMul-29."""

from __future__ import annotations

import onnx

from generator.onnx_build import PROPOSAL_DOMAIN
from generator.zoo import ZOO, case_dir
from upstream.zoo import UPSTREAM_ZOO, case_ids, expected_files, standard_model


def test_the_folder_is_what_upstream_zoo_writes() -> None:
    ids = case_ids()
    assert len(ids) >= 30
    written = sorted(p.relative_to(UPSTREAM_ZOO).as_posix() for p in UPSTREAM_ZOO.rglob("*") if p.is_file())
    wanted = []
    for case_id in ids:
        folder = UPSTREAM_ZOO / case_dir(case_id).relative_to(ZOO)
        for rel, data in expected_files(case_id).items():
            assert (folder / rel).read_bytes() == data, f"{case_id}/{rel}: rerun python -m upstream.zoo"
            wanted.append((folder / rel).relative_to(UPSTREAM_ZOO).as_posix())
    assert written == sorted(wanted)


def test_every_case_calls_groupedmatmul_29_and_carries_no_body_of_its_own() -> None:
    for case_id in case_ids():
        model = standard_model(case_id)
        assert {(o.domain, o.version) for o in model.opset_import} >= {("", 29)}, case_id
        assert not any(f.name == "GroupedMatMul" for f in model.functions), case_id
        calls = [n for g in (model.graph, *model.functions) for n in g.node if n.op_type == "GroupedMatMul"]
        assert calls and all(n.domain == "" for n in calls), case_id
        assert all(n.domain != PROPOSAL_DOMAIN or n.op_type != "GroupedMatMul" for f in model.functions for n in f.node)
        original = onnx.load(str(case_dir(case_id) / "model.onnx"))
        assert [i.name for i in model.graph.input] == [i.name for i in original.graph.input]
