"""The one plug-in rule (``generator.plugins``): the project's pyproject table, then entry points,
for every registry: runtimes, pipeline backends and KV-cache formats. A broken entry or a
broken pyproject.toml is one line (exit 2 from a CLI), never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from generator import plugins
from generator.errors import UsageError
from generator.plugins import Plugin, PluginKind, discover, load
from generator.runtimes import RUNTIMES
from proposals.text_pipeline.cache_formats import KV_CACHE_FORMATS
from proposals.text_pipeline.factory import PIPELINE_BACKENDS

KIND = PluginKind("widgets", "test_plugins.widgets", "widget")
KINDS = (RUNTIMES, PIPELINE_BACKENDS, KV_CACHE_FORMATS)


def _installed(site: Path, group: str, entries: dict[str, str]) -> None:
    """A fake installed distribution declaring ``entries`` under ``group``."""
    dist = site / "fake_plugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch pyproject.toml that the registries read, and an importable scratch folder;
    the registries discover again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("generator.project.PYPROJECT", tmp_path / "pyproject.toml")
    plugins.discovered.cache_clear()
    yield tmp_path
    plugins.discovered.cache_clear()


def test_the_three_registries_are_kinds_of_one_rule() -> None:
    assert [k.setting for k in KINDS] == ["runtimes", "pipeline-backends", "kv-cache-formats"]
    assert [k.group for k in KINDS] == [
        "onnx_genai_proposals.runtimes",
        "onnx_genai_proposals.pipeline_backends",
        "onnx_genai_proposals.kv_cache_formats",
    ]
    listed = {k.setting: [p.target for p in plugins.plugins(k)] for k in KINDS}
    assert "conformance.engines.tract:TractRuntime" in listed["runtimes"]
    assert "proposals.text_pipeline.backends.paged" in listed["pipeline-backends"]
    assert listed["kv-cache-formats"] == ["proposals.quantized_attention.pipeline_cache"]


def test_table_first_then_entry_points_by_name(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "widget_a.py").write_text("WIDGET = 'a'\n")
    (project / "widget_b.py").write_text("WIDGET = 'b'\n")
    (project / "pyproject.toml").write_text('[tool.onnx-genai-proposals]\nwidgets = ["widget_b:WIDGET"]\n')
    site = project / "site"
    _installed(site, KIND.group, {"zz": "widget_b", "aa": "widget_a:WIDGET"})
    monkeypatch.syspath_prepend(str(site))
    found = plugins.plugins(KIND)
    assert [p.target for p in found] == ["widget_b:WIDGET", "widget_a:WIDGET", "widget_b"]
    assert found[1].source == f"entry point 'aa' of group {KIND.group}"
    assert discover(KIND) == ["b", "a", sys.modules["widget_b"]]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz", "cannot import it (ModuleNotFoundError: No module named 'no_such_module_xyz')"),
        ("widget_raises", "cannot import it (RuntimeError: vendor library missing)"),
        ("widget_ok:NOPE", "cannot import it (AttributeError:"),
        ("widget_ok:", "expected module or module:name"),
    ],
)
def test_a_broken_target_is_one_line_naming_it_and_where_it_was_listed(project: Path, target, message) -> None:
    (project / "widget_raises.py").write_text("raise RuntimeError('vendor library missing\\nmore detail')\n")
    (project / "widget_ok.py").write_text("")
    with pytest.raises(UsageError) as err:
        load(Plugin(target, "pyproject.toml [tool.onnx-genai-proposals] widgets"), KIND)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"widget {target!r}: ")
    assert str(err.value).endswith(" (from pyproject.toml [tool.onnx-genai-proposals] widgets)")


def test_invalid_toml_is_one_line(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.onnx-genai-proposals\nwidgets = [\n")
    with pytest.raises(UsageError, match=r"pyproject.toml is not valid TOML \(") as err:
        plugins.plugins(KIND)
    assert "\n" not in str(err.value)


BROKEN_PYPROJECTS = {
    "a missing format module": '[tool.onnx-genai-proposals]\nkv-cache-formats = ["proposals.no_such_format"]\n',
    "invalid TOML": "[tool.onnx-genai-proposals\nkv-cache-formats = [\n",
    "a format list that is a string": '[tool.onnx-genai-proposals]\nkv-cache-formats = "proposals.x"\n',
}


@pytest.mark.parametrize("text", BROKEN_PYPROJECTS.values(), ids=BROKEN_PYPROJECTS)
def test_a_broken_pyproject_stops_a_pipeline_call_with_one_line(project: Path, capsys, text: str) -> None:
    """Issue 23 item 5: it was a traceback on every pipeline call."""
    from proposals.text_pipeline.__main__ import main

    (project / "pyproject.toml").write_text(text)
    assert main(["hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "pyproject.toml" in err, err


def test_a_broken_backend_entry_is_one_line_from_the_factory(project: Path) -> None:
    from proposals.text_pipeline.factory import backend_names

    (project / "pyproject.toml").write_text('[tool.onnx-genai-proposals]\npipeline-backends = ["no_such_backend"]\n')
    with pytest.raises(
        UsageError, match=r"pipeline backend 'no_such_backend': cannot import it .* \(from pyproject.toml"
    ) as err:
        backend_names()
    assert "\n" not in str(err.value)


def test_an_installed_package_adds_a_pipeline_backend(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry-point half of the rule, for the registry that had none: a backend module in
    an installed package registers itself with the factory when discovered."""
    from proposals.text_pipeline import factory

    (project / "echo_backend.py").write_text(
        "from proposals.text_pipeline.factory import Device, register_backend\n"
        "register_backend('echo', lambda folder, device: None, lambda: [Device('CPU')])\n"
    )
    _installed(project / "site", PIPELINE_BACKENDS.group, {"echo": "echo_backend"})
    monkeypatch.syspath_prepend(str(project / "site"))
    monkeypatch.setattr(factory, "_BACKENDS", {})
    (project / "pyproject.toml").write_text("")
    assert factory.backend_names() == ["echo"]
    assert [d.identifier for d in factory.enumerate_devices("echo")] == ["CPU"]


def test_a_broken_runtime_entry_stops_verify_with_one_line(project: Path, capsys) -> None:
    from generator.cli import main

    (project / "pyproject.toml").write_text('[tool.onnx-genai-proposals]\nruntimes = ["no_such_engine:Runtime"]\n')
    assert main(["verify", "--json", str(project / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "runtime 'no_such_engine:Runtime': cannot import it (ModuleNotFoundError" in err
    assert err.endswith("(from pyproject.toml [tool.onnx-genai-proposals] runtimes)\n")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_fuzz_harness_leaves_out_engines_that_are_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule as verify's skipped column: a missing optional engine is not a failure."""
    from conformance import harness
    from generator.runtimes import ReferenceRuntime

    class Missing(ReferenceRuntime):
        name = "missing-engine"

        def version(self) -> str:
            raise ModuleNotFoundError("No module named 'missing_engine'")

    monkeypatch.setattr(harness, "available", lambda: [ReferenceRuntime(), Missing()])
    assert [rt.name for rt in harness.runtimes()] == ["reference"]
