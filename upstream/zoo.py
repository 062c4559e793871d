"""``python -m upstream.zoo``: the MoE zoo cases in the opset-29 form, ``upstream/zoo/``.

Each case is the committed zoo case (``zoo/moe/``) with its GroupedMatMul calls on ai.onnx
GroupedMatMul-29 (:func:`proposals.moe.grouped_matmul.on_onnx_op`): the same inputs and expected
outputs, byte for byte, in onnx's backend-test layout. They sit beside the zoo, not in it,
because onnx 1.23.2 (the pinned release) stops at opset 28: its checker refuses them, and
every runtime built on it would only report "unsupported". ``make upstream`` verifies them
with onnx-weekly's reference; ``tests`` check that the folder matches the zoo.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import onnx

from generator.zoo import ZOO, case_dir, load_datasets, load_manifest

UPSTREAM_ZOO = Path(__file__).resolve().parent / "zoo"
TOPIC = "moe"


def case_ids() -> list[str]:
    """Every MoE zoo case: each model calls GroupedMatMul (alone, or inside the MoE body)."""
    return sorted(c for c in load_manifest()["cases"] if c.startswith(f"{TOPIC}/"))


def standard_model(case_id: str, zoo: Path = ZOO) -> onnx.ModelProto:
    from proposals.moe.grouped_matmul import on_onnx_op

    return on_onnx_op(onnx.load(str(case_dir(case_id, zoo) / "model.onnx")))


def expected_files(case_id: str) -> dict[str, bytes]:
    """relative path -> bytes of the opset-29 case folder."""
    source = case_dir(case_id)
    files = {"model.onnx": standard_model(case_id).SerializeToString(deterministic=True)}
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if path.is_file() and rel != "model.onnx":
            files[rel] = path.read_bytes()
    return files


def weekly_reference(model: onnx.ModelProto):
    """onnx's ReferenceEvaluator on ``model`` with its model-local functions inlined first:
    onnx-weekly's evaluator builds GroupedMatMul-29's context-dependent body from the input
    types, which it does not know inside a model-local function (see the GroupedMatMul page)."""
    import onnx.inliner

    from generator.runtimes import ReferenceRuntime

    return ReferenceRuntime().load_model(onnx.inliner.inline_local_functions(model) if model.functions else model)


def verify(select: Callable[[str], bool] = lambda case_id: True, root: Path = UPSTREAM_ZOO) -> dict[str, dict]:
    """case id -> the first failing cell (or a pass) of the committed opset-29 cases on the
    running onnx's reference; needs onnx-weekly (GroupedMatMul-29)."""
    from conformance.engines import clean
    from generator.verify import compare, first_line

    manifest = load_manifest()["cases"]
    table = {}
    for case_id in filter(select, case_ids()):
        entry = manifest[case_id]
        folder = root / case_dir(case_id).relative_to(ZOO)
        cell = {"status": "pass"}
        try:
            runner = weekly_reference(onnx.load(str(folder / "model.onnx")))
            for feeds, expected in load_datasets(case_id, entry):
                close, _, problem = compare(runner(feeds), expected, entry["rtol"], entry["atol"])
                if not close:
                    cell = {"status": "mismatch", "detail": problem}
                    break
        except Exception as err:  # noqa: BLE001 - reported, not raised
            cell = {"status": "error", "detail": clean(first_line(err))}
        table[case_id] = cell
    return table


def write(root: Path = UPSTREAM_ZOO) -> int:
    """Rewrite ``root`` (it owns only the folders it writes); returns the number of cases."""
    ids = case_ids()
    if root.exists():
        shutil.rmtree(root)
    for case_id in ids:
        folder = root / case_dir(case_id).relative_to(ZOO)
        for rel, data in expected_files(case_id).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    return len(ids)


RESULTS = Path(__file__).resolve().parent / "results" / "zoo.json"


def main(argv: list[str]) -> int:
    if argv == ["--verify"]:
        table = verify()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        failed = {c: cell for c, cell in table.items() if cell["status"] != "pass"}
        for case_id, cell in failed.items():
            print(f"{case_id}: {cell['status']}: {cell.get('detail', '')}")
        passed = len(table) - len(failed)
        print(f"upstream zoo on onnx {onnx.__version__}'s reference: {passed} passed, {len(failed)} failed")
        return 1 if failed else 0
    if argv:
        print("usage: python -m upstream.zoo [--verify]", file=sys.stderr)
        return 2
    print(f"wrote {write()} cases to upstream/zoo")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
