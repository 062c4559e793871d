"""The benchmark in quick mode runs; its ratios divide each variant's time by the baseline's
(with times given, not measured), and its writer keeps the rows and draws the SVG."""

from __future__ import annotations

import json

import numpy as np

from generator import bench as spine_bench
from proposals.kv_cache import bench


def test_bench_quick_runs(capsys) -> None:
    bench.main(quick=True)
    out = capsys.readouterr().out
    assert "IOBinding in place" in out and "L=   256" in out


def test_bench_writes_json_and_svg(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(spine_bench, "results_dir", lambda topic: tmp_path)
    variants = list(bench.update_variants(32, np.random.RandomState(0)))
    # times 1, 2 and 3 us in variant order: each ratio is its time over the middle one's
    fake = {name: (i + 1) * 1e-6 for i, name in enumerate(variants)}
    monkeypatch.setattr(spine_bench, "time_interleaved", lambda found, **_: {n: fake[n] for n in found})
    rows = bench.measure(bench.update_variants, [32], variants[1])
    assert rows == [{"L": 32, "seconds": fake, "ratios": dict(zip(variants, (0.5, 1.0, 1.5), strict=True))}]
    bench.write_results("kv_update", rows, title="t", unit=1e-6, ylabel="us")
    payload = json.loads((tmp_path / "kv_update.json").read_text())
    assert payload["rows"] == rows
    assert (tmp_path / "kv_update.svg").read_text().lstrip().startswith("<?xml")
