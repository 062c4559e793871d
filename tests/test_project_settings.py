"""``generator.project.setting_list``: the plug-in names pyproject.toml's own table lists."""

from __future__ import annotations

import pytest

from generator.errors import UsageError
from generator.project import setting_list


def test_reads_the_projects_lists() -> None:
    assert "conformance.engines.tract:TractRuntime" in setting_list("runtimes")
    assert setting_list("kv-cache-formats") == ["proposals.quantized_attention.pipeline_cache"]
    assert setting_list("no-such-setting") == []


def test_a_missing_pyproject_lists_nothing_and_a_bad_value_is_one_line(tmp_path) -> None:
    assert setting_list("runtimes", tmp_path / "pyproject.toml") == []
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[tool.onnx-genai-proposals]\nruntimes = "a:B"\n')
    with pytest.raises(UsageError, match=r"\[tool.onnx-genai-proposals\] runtimes must be a list of strings") as err:
        setting_list("runtimes", bad)
    assert "\n" not in str(err.value)
