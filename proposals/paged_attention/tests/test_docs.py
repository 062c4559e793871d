"""The paging picture of the blog post, drawn from the block allocator."""

from __future__ import annotations

import numpy as np

from generator.site_markup import wrap_graphs
from proposals.paged_attention import docs
from proposals.paged_attention.blocks import plan_step
from proposals.paged_attention.reference import paged_attention, read_sequence


def test_paging_example_shares_a_prefix_block_and_traces_a_slot() -> None:
    """The traced slot is where the paged reference writes that token this step (each
    appended token's key is its sequence number + 1), and where a read of the sequence finds it."""
    rows, table, slot = docs.paging_example()
    assert rows[0][0] == rows[1][0]  # sequence 1 starts on sequence 0's prompt block
    assert len({b for row in rows for b in row}) == sum(len(r) for r in rows) - 1
    seq, pos = docs.PICTURE_TOKEN
    assert pos == docs.PICTURE_LENGTHS[seq] - 1  # a token the step appends
    lengths = np.array(docs.PICTURE_LENGTHS, np.int64)
    step = plan_step(rows, list(lengths - 1), [1] * len(rows), docs.PICTURE_BLOCK_SIZE)
    np.testing.assert_array_equal(step.block_table, table)
    keys = np.arange(1, len(rows) + 1, dtype=np.float32).reshape(-1, 1, 1)
    pool = np.zeros((docs.PICTURE_POOL, docs.PICTURE_BLOCK_SIZE, 1, 1), np.float32)
    result = paged_attention(keys, keys, keys, pool, pool, **step.as_inputs())
    assert result.key_cache.reshape(-1)[slot] == seq + 1
    assert read_sequence(result.key_cache, table[seq], pos + 1)[pos].item() == seq + 1


def test_paging_svg_names_the_blocks_and_is_deterministic() -> None:
    svg = docs.paging_svg()
    assert svg.lstrip().startswith("<?xml") and svg.rstrip().endswith("</svg>")
    # matplotlib keeps each text drawn as paths in a comment beside it.
    for b in range(docs.PICTURE_POOL):
        assert f"<!-- block {b}" in svg
    assert "shared" in svg and "block table" in svg
    assert svg == docs.paging_svg()
    # The site shows it in a scroll box with a link to the full-size file.
    figures: dict[str, str] = {}
    assert 'class="graph-open"' in wrap_graphs(svg, 2, figures) and len(figures) == 1
