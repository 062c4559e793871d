"""The page's generated parts read the committed JSON; the accuracy rewrite is exact."""

from __future__ import annotations

import numpy as np

from generator.onnx_build import seeded
from proposals.quantized_attention import accuracy, docs, reference


def test_generated_sections_render_from_committed_json() -> None:
    assert "| 32768 |" in docs.bench_table()
    assert docs.fusion_summary().startswith("At 4k tokens")
    assert docs.accuracy_table().count("\n") == len(accuracy.configs()) + 1
    assert "per channel vs" in docs.key_granularity_verdict()


def test_synthetic_error_is_zero_free_and_ordered_by_bit_width() -> None:
    int8 = accuracy.synthetic_error("int8", "per_channel", None)
    int4 = accuracy.synthetic_error("int4", "per_channel", None)
    assert 0 < int8 < int4


def test_synthetic_keys_have_outlier_channels() -> None:
    keys = accuracy.synthetic_keys(seeded(0))
    spread = np.abs(keys).mean(axis=(0, 1, 2))
    assert set(np.argsort(spread)[-4:]) == {3, 17, 64, 100}
    assert reference.dynamic_scale(keys, "per_token", "int8").shape == (1, 8, 256, 1)
