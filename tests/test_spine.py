"""The spine on a synthetic case: registry, zoo writer, integrity check, verifier, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from generator import Case, DataSet, UsageError, zoo
from generator.cli import main
from generator.graphs import graph_svg, to_dot
from generator.onnx_build import PRODUCER_NAME, PRODUCER_VERSION, make_model, tensor_info
from generator.registry import CaseSpec, discover, select, topics
from generator.runtimes import OnnxRuntime, ReferenceRuntime, Runtime
from generator.verify import compare, failures, first_line, verify

ROOT = Path(__file__).resolve().parent.parent


def _add_case(scale: float = 2.0) -> Case:
    """y = x * scale + bias, with the expectation in numpy."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([1, 2, 3], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["s"], value_float=scale),
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [tensor_info("x", x), tensor_info("bias", bias)],
        [tensor_info("y", np.float32, ["N", 3])],
    )
    model = make_model(graph, {"": 21})
    inputs = {"x": x, "bias": bias}
    return Case(model, [DataSet(inputs, {"y": x * 2.0 + bias})])


def _spec(build=_add_case, name: str = "affine") -> CaseSpec:
    return CaseSpec("spine", name, "An affine map.", build)


@pytest.fixture
def tiny_zoo(tmp_path: Path) -> Path:
    zoo.write([_spec()], tmp_path / "zoo", prune=True)
    return tmp_path / "zoo"


def test_model_is_stamped() -> None:
    model = zoo.build(_spec()).case.model
    assert (model.producer_name, model.producer_version) == (PRODUCER_NAME, PRODUCER_VERSION)
    assert model.ir_version == 10  # opset 21 needs IR 10


def test_writer_is_byte_deterministic(tmp_path: Path) -> None:
    first = zoo.write([_spec()], tmp_path / "a", prune=True)
    second = zoo.write([_spec()], tmp_path / "b", prune=True)
    assert first == second
    for rel in first["cases"]["spine/affine"]["files"]:
        assert (zoo.case_dir("spine/affine", tmp_path / "a") / rel).read_bytes() == (
            zoo.case_dir("spine/affine", tmp_path / "b") / rel
        ).read_bytes()


def test_layout_is_backend_test_layout(tiny_zoo: Path) -> None:
    folder = tiny_zoo / "spine" / "test_affine"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == [
        "data.json",
        "model.onnx",
        "test_data_set_0/input_0.pb",
        "test_data_set_0/input_1.pb",
        "test_data_set_0/output_0.pb",
    ]
    entry = json.loads((tiny_zoo / "manifest.json").read_text())["cases"]["spine/affine"]
    assert entry["outputs"] == [{"dtype": "float32", "name": "y", "shape": ["N", 3]}]
    assert entry["opset_imports"] == {"ai.onnx": 21}


def test_prune_removes_stale_cases(tiny_zoo: Path) -> None:
    zoo.write([_spec(name="other")], tiny_zoo, prune=True)
    assert not (tiny_zoo / "spine" / "test_affine").exists()
    assert list(json.loads((tiny_zoo / "manifest.json").read_text())["cases"]) == ["spine/other"]


def test_dataset_must_match_graph_io() -> None:
    def bad() -> Case:
        good = _add_case()
        return Case(good.model, [DataSet({"x": good.datasets[0].inputs["x"]}, good.datasets[0].outputs)])

    with pytest.raises(UsageError, match=r"spine/affine dataset 0: inputs \['x'\] do not match"):
        zoo.build(_spec(bad))


def test_dtype_mismatch_is_reported() -> None:
    def bad() -> Case:
        good = _add_case()
        inputs = dict(good.datasets[0].inputs, x=good.datasets[0].inputs["x"].astype(np.float64))
        return Case(good.model, [DataSet(inputs, good.datasets[0].outputs)])

    with pytest.raises(UsageError, match="input 'x' is float64, the graph declares float32"):
        zoo.build(_spec(bad))


def test_verify_passes_and_records(tiny_zoo: Path) -> None:
    matrix = verify([ReferenceRuntime(), OnnxRuntime()], zoo=tiny_zoo)
    cells = matrix["cases"]["spine/affine"]["results"]
    assert cells["reference"]["status"] == cells["onnxruntime"]["status"] == "pass"
    assert matrix["cases"]["spine/affine"]["checker"] == "ok"
    assert failures(matrix) == []


class _WrongRuntime(Runtime):
    """Adds one to every output: a runtime that loads the model and gets it wrong."""

    name = "wrong"

    def version(self) -> str:
        return "0"

    def load(self, model_path: Path):
        inner = ReferenceRuntime().load(model_path)
        return lambda inputs: {k: v + 1 for k, v in inner(inputs).items()}


class _RefusingRuntime(Runtime):
    name = "refusing"

    def version(self) -> str:
        return "0"

    def load(self, model_path: Path):
        raise RuntimeError("Exception from src/core.cpp:84:\nNo conversion rule found for operations: Mul")


def test_mismatch_fails_unsupported_does_not(tiny_zoo: Path) -> None:
    matrix = verify([_WrongRuntime(), _RefusingRuntime()], zoo=tiny_zoo)
    cells = matrix["cases"]["spine/affine"]["results"]
    assert cells["wrong"]["status"] == "mismatch" and cells["wrong"]["max_abs_err"] == 1.0
    assert cells["refusing"] == {
        "status": "unsupported",
        "max_abs_err": None,
        "detail": "RuntimeError: No conversion rule found for operations: Mul",
        "known_divergence": None,
    }
    assert failures(matrix) == [
        "spine/affine on wrong: mismatch: output 'y': max abs error 1 > atol 1e-06 + rtol 1e-05·|x|"
    ]


def test_known_divergence_is_recorded_not_failed(tmp_path: Path) -> None:
    def diverging() -> Case:
        base = _add_case()
        return Case(base.model, base.datasets, divergences={"wrong": "adds one, on purpose"})

    class _WrongToo(_WrongRuntime):
        name = "wrong-too"
        shares_divergences_with = ("wrong",)

    zoo.write([_spec(diverging)], tmp_path, prune=True)
    matrix = verify([_WrongRuntime(), _WrongToo()], zoo=tmp_path)
    for name in ("wrong", "wrong-too"):
        assert matrix["cases"]["spine/affine"]["results"][name]["known_divergence"] == "adds one, on purpose"
    assert failures(matrix) == []


def test_tampered_file_is_named(tiny_zoo: Path) -> None:
    target = tiny_zoo / "spine/test_affine/test_data_set_0/output_0.pb"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    with pytest.raises(UsageError, match=r"spine/test_affine/test_data_set_0/output_0.pb: sha256 .* differs"):
        verify([ReferenceRuntime()], zoo=tiny_zoo)


def test_unlisted_file_is_named(tiny_zoo: Path) -> None:
    (tiny_zoo / "spine/test_affine/test_data_set_0/input_9.pb").write_bytes(b"extra")
    with pytest.raises(UsageError, match=r"spine/test_affine/test_data_set_0/input_9.pb: not in the manifest"):
        verify([ReferenceRuntime()], zoo=tiny_zoo)


def test_compare_reports_shape_and_value_errors() -> None:
    want = {"y": np.zeros((2, 3), np.float32)}
    assert compare({"y": np.zeros((3, 2), np.float32)}, want, 0, 0)[2] == (
        "output 'y' has shape (3, 2), expected (2, 3)"
    )
    ok, err, _ = compare({"y": np.full((2, 3), 1e-7, np.float32)}, want, 0, 1e-6)
    assert ok and err == pytest.approx(1e-7)
    assert not compare({"y": np.zeros((2, 3), np.float32)}, {"y": np.ones((2, 3), np.int64)}, 0, 0)[0]


def test_first_line_prefers_openvino_summary() -> None:
    err = RuntimeError(
        "Exception from src/core.cpp:84:\nModel wasn't fully converted.\n-- Attention-24 with a message:\n"
        "Element not supported\n\nSummary:\n-- No conversion rule found for operations: TensorScatter-24\n"
        "-- Conversion is failed for: Attention-24\n"
    )
    assert first_line(err) == (
        "RuntimeError: No conversion rule found for operations: TensorScatter-24; "
        "Conversion is failed for: Attention-24"
    )


def test_first_line_skips_source_locations() -> None:
    err = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at x.cpp:1:\n-- No rule: Foo-24\n"
    )
    assert first_line(err) == "RuntimeError: No rule: Foo-24"


def test_graph_picture() -> None:
    model = _add_case().model
    dot = to_dot(model.graph)
    assert '"n1" -> "n2" [label="xs"]' in dot
    svg = graph_svg(model)
    assert svg.startswith("<svg") and "Mul" in svg


def test_registry_discovers_proposal_cases() -> None:
    cases = discover()
    assert cases, "no zoo cases registered"
    for spec in cases.values():
        assert spec.id == f"{spec.topic}/{spec.name}"
        assert spec.description and "\n" not in spec.description
    assert select([next(iter(cases.values())).topic])


def test_unknown_case_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"unknown case 'no_such_case'; valid: a topic \("):
        select(["no_such_case"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m generator`` as a process (see ``run_main`` for the in-process runs)."""
    return subprocess.run(
        [sys.executable, "-m", "generator", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("zoo", "no_such_case"), "error: unknown case 'no_such_case'; valid: a topic ("),
        (("verify", "no_such_case"), "error: unknown case 'no_such_case'; valid: a topic ("),
        (("frobnicate",), "error: argument command: invalid choice: 'frobnicate'"),
        (("verify", "--runtime", "nomodule"), "error: runtime 'nomodule': expected module:ClassName"),
        (("bench", "no_such_topic"), "error: unknown topic 'no_such_topic'; valid: "),
    ],
)
def test_cli_usage_errors_exit_2_in_one_line(run_main, args: tuple[str, ...], message: str) -> None:
    result = run_main(main, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_tampered_file(tmp_path: Path) -> None:
    """A process: the exit status ``python -m generator`` gives (the other CLI tests run
    ``main`` in this process)."""
    zoo_copy = tmp_path / "zoo"
    shutil.copytree(ROOT / "zoo", zoo_copy)
    case_id = next(iter(json.loads((zoo_copy / "manifest.json").read_text())["cases"]))
    model = zoo.case_dir(case_id, zoo_copy) / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")
    result = _cli("verify", "--zoo", str(zoo_copy), "--json", str(tmp_path / "m.json"), case_id)
    assert result.returncode == 2
    shown = model.relative_to(tmp_path).as_posix()
    assert f"{shown}: sha256" in result.stderr and result.stderr.count("\n") == 1


def test_committed_zoo_lists_every_registered_case() -> None:
    assert sorted(zoo.load_manifest()["cases"]) == sorted(discover()), "run `make zoo` and commit"


@pytest.mark.parametrize("topic", topics())
def test_committed_zoo_matches_the_case_functions(fresh_zoo, topic: str) -> None:
    """Regenerating from the committed code gives the committed bytes (make zoo is a no-op).
    One topic per test; test_zoo_portable compares every byte of the whole zoo."""
    committed = {cid: e for cid, e in zoo.load_manifest()["cases"].items() if e["topic"] == topic}
    fresh = fresh_zoo.entries(topic)
    assert sorted(fresh) == sorted(committed), "run `make zoo` and commit"
    stale = [
        f"{cid}/{rel}"
        for cid, entry in fresh.items()
        for rel, meta in entry["files"].items()
        if committed[cid]["files"].get(rel) != meta
    ]
    assert not stale, f"zoo is stale for {stale[:5]}; run `make zoo` and commit"
    assert fresh == committed


def test_docs_matrix_is_rerun_when_partial(tiny_zoo: Path, tmp_path: Path) -> None:
    from generator.docs import load_matrix
    from generator.verify import write_matrix

    path = tmp_path / "matrix.json"
    write_matrix({"runtimes": [], "cases": {}}, path)  # as a `verify <pattern>` run might leave it
    matrix = load_matrix(path, tiny_zoo)
    assert list(matrix["cases"]) == ["spine/affine"]
    assert load_matrix(path, tiny_zoo) == matrix  # now current: read, not re-run
