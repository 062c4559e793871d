"""Smoke test of the benchmark (quick mode): it runs, and its writer produces JSON + SVG."""

from __future__ import annotations

import json

from generator import bench as spine_bench
from proposals.kv_cache import bench


def test_bench_quick_runs(capsys) -> None:
    bench.main(quick=True)
    out = capsys.readouterr().out
    assert "IOBinding in place" in out and "L=   256" in out


def test_bench_writes_json_and_svg(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(spine_bench, "results_dir", lambda topic: tmp_path)
    rows = bench.measure(bench.update_variants, [32], "TensorScatter, IOBinding in place", batches=1, min_batch_s=0.0)
    bench.write_results("kv_update", rows, title="t", unit=1e-6, ylabel="us")
    payload = json.loads((tmp_path / "kv_update.json").read_text())
    assert payload["rows"][0]["ratios"]["TensorScatter, IOBinding in place"] == 1.0
    assert (tmp_path / "kv_update.svg").read_text().lstrip().startswith("<?xml")
