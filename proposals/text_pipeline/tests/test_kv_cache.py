"""The KV-cache format option: ``--kv-cache`` on the CLI and the ``kv_cache`` device setting
through ``create_pipeline``; the committed agreement and memory figures reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generator.bench import load_results
from generator.errors import UsageError
from generator.project import setting_list
from proposals.text_pipeline import kv_cache_report
from proposals.text_pipeline.__main__ import main
from proposals.text_pipeline.cache_formats import KV_CACHE_FORMATS, cache_format, cache_format_names
from proposals.text_pipeline.config import GenerationInput
from proposals.text_pipeline.factory import Device, create_pipeline
from proposals.text_pipeline.families import TINY
from proposals.text_pipeline.folder import write_folder

# Greedy agreement is an exact count on one machine; another CPU's float32 kernels may move
# a near-tie, so the committed figure is matched within this share of the tokens.
AGREEMENT_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return write_folder("llama", tmp_path_factory.mktemp("kv") / "llama")


def test_formats_come_from_pyproject_and_name_the_valid_ones() -> None:
    assert "proposals.quantized_attention.pipeline_cache" in setting_list(KV_CACHE_FORMATS.setting)
    assert cache_format_names()[:2] == ["float32", "int8"]
    with pytest.raises(UsageError, match=r"unknown KV-cache format 'int3'; valid: float32, int8") as err:
        cache_format("int3")
    assert "\n" not in str(err.value)


def test_cli_generates_with_an_int8_cache_end_to_end(run_main, llama) -> None:
    """The CLI's text is the int8 pipeline's, and that pipeline really holds int8 codes.
    (The exit status of the process: test_cli.py.)"""
    done = run_main(main, "The KV cache", "--model-dir", str(llama), "--kv-cache", "int8", "--max-new-tokens", "32")
    assert done.returncode == 0, done.stderr
    pipeline = create_pipeline("onnxruntime", llama, Device("CPU", {"kv_cache": "int8"}))
    pipeline.set_generation_config(pipeline.get_generation_config().with_(max_new_tokens=32))
    result = pipeline(GenerationInput("The KV cache"))
    assert done.stdout == result.text + "\n"
    caches = pipeline.engine.runner.caches
    assert caches["key_0"].dtype == np.int8 and caches["key_0_scale"].dtype == np.float32
    assert {c.dtype for name, c in caches.items() if not name.endswith("_scale")} == {np.dtype(np.int8)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kv-cache", "int3"], "unknown KV-cache format 'int3'; valid: float32, int8"),
        (["--kv-cache", "int8", "--backend", "transformers"], "has no setting 'kv_cache'; its settings: torch_device"),
    ],
)
def test_bad_kv_cache_values_exit_2_with_one_line(run_main, args, message) -> None:
    done = run_main(main, "x", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_create_pipeline_takes_only_settings_the_device_declares(llama) -> None:
    with pytest.raises(
        UsageError, match="has no setting 'kv_caches'; its settings: inplace_cache, kv_cache, moe, provider"
    ):
        create_pipeline("onnxruntime", llama, Device("CPU", {"kv_caches": "int8"}))
    with pytest.raises(UsageError, match="unknown KV-cache format 'fp4'"):
        create_pipeline("onnxruntime", llama, Device("CPU", {"kv_cache": "fp4"}))


def test_committed_agreement_and_memory_reproduce() -> None:
    """The committed kv_cache.json against a fresh run on the issue's decoders (Llama, Qwen3):
    memory exactly (it is read off the graphs), agreement within AGREEMENT_TOLERANCE."""
    committed = {(r["arch"], r["kv_cache"]): r for r in load_results("text_pipeline", "kv_cache")["rows"]}
    for row in kv_cache_report.rows(("llama", "qwen3")):
        want = committed[row["arch"], row["kv_cache"]]
        memory = ("cache_bytes_per_token", "context", "cache_bytes_at_context", "bytes_ratio_to_float32")
        assert {k: row[k] for k in memory} == {k: want[k] for k in memory}, json.dumps(row)
        assert abs(row["token_agreement"] - want["token_agreement"]) <= AGREEMENT_TOLERANCE, (row, want)


def test_int8_memory_matches_the_layout() -> None:
    """int8 codes (1 byte per channel) plus one float32 scale per token and head, against
    float32's 4 bytes per channel: (D + 4) / 4D of the float32 cache, for every architecture."""
    d = TINY["head_dim"]
    for row in load_results("text_pipeline", "kv_cache")["rows"]:
        if row["kv_cache"] == "int8":
            assert row["bytes_ratio_to_float32"] == (d + 4) / (4 * d)
