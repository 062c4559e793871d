"""The paging picture of the blog post, drawn from the block allocator."""

from __future__ import annotations

from generator.site_markup import wrap_graphs
from proposals.paged_attention import docs


def test_paging_example_shares_a_prefix_block_and_traces_a_slot() -> None:
    rows, table, slot = docs.paging_example()
    assert rows[0][0] == rows[1][0]  # sequence 1 starts on sequence 0's prompt block
    assert len({b for row in rows for b in row}) == sum(len(r) for r in rows) - 1
    seq, pos = docs.PICTURE_TOKEN
    assert slot == table[seq][pos // docs.PICTURE_BLOCK_SIZE] * docs.PICTURE_BLOCK_SIZE + pos % docs.PICTURE_BLOCK_SIZE


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
