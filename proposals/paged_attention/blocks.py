"""The scheduler side, reduced to what a test needs: a block allocator and the
per-step inputs (cu_seqlens_q, seq_lens, block_table, slot_mapping) it hands the model.

Nothing here is in the model: every system studied keeps allocation outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from generator.errors import UsageError
from generator.onnx_build import seeded


@dataclass(frozen=True)
class StepInputs:
    """The per-step tensors a paged model takes besides the token data (all int64)."""

    cu_seqlens_q: np.ndarray  # [B+1] query start offsets in the packed token stream
    seq_lens: np.ndarray  # [B] KV length after this step (past + new)
    block_table: np.ndarray  # [B, max_blocks] physical block of each logical block
    slot_mapping: np.ndarray  # [T] flat slot (block * block_size + offset) of each token

    def as_inputs(self) -> dict[str, np.ndarray]:
        return {
            "cu_seqlens_q": self.cu_seqlens_q,
            "seq_lens": self.seq_lens,
            "block_table": self.block_table,
            "slot_mapping": self.slot_mapping,
        }


def slot_of(block_row: Sequence[int], position: int, block_size: int) -> int:
    """vLLM's rule: block_table[pos // block_size] * block_size + pos % block_size."""
    return int(block_row[position // block_size]) * block_size + position % block_size


def plan_step(
    blocks: Sequence[Sequence[int]],
    past_lens: Sequence[int],
    q_lens: Sequence[int],
    block_size: int,
    *,
    max_blocks: int | None = None,
    pad_block: int = -1,
) -> StepInputs:
    """Step inputs for sequences that own ``blocks`` and append ``q_lens`` tokens each.

    Unused block-table entries hold ``pad_block`` (-1 like ORT; reads never reach them).
    """
    if not len(blocks) == len(past_lens) == len(q_lens):
        raise UsageError("blocks, past_lens and q_lens need one entry per sequence")
    width = max_blocks or max(len(row) for row in blocks)
    table = np.full((len(blocks), width), pad_block, dtype=np.int64)
    slots: list[int] = []
    for b, (row, past, new) in enumerate(zip(blocks, past_lens, q_lens, strict=True)):
        needed = -(-(past + new) // block_size)
        if needed > len(row) or len(row) > width:
            raise UsageError(
                f"sequence {b} needs {needed} blocks for {past + new} tokens, has {len(row)} "
                f"(block table width {width})"
            )
        table[b, : len(row)] = row
        slots.extend(slot_of(row, p, block_size) for p in range(past, past + new))
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    seq_lens = (np.asarray(past_lens) + np.asarray(q_lens)).astype(np.int64)
    return StepInputs(cu, seq_lens, table, np.asarray(slots, dtype=np.int64))


@dataclass
class BlockAllocator:
    """A free list of physical blocks handed out in a seeded, shuffled order, so tests
    never see a sequence's blocks laid out contiguously by accident."""

    num_blocks: int
    block_size: int
    seed: int = 0
    free: list[int] = field(init=False)
    owned: dict[int, list[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.free = [int(b) for b in seeded(self.seed).permutation(self.num_blocks)]

    def reserve(self, seq: int, total_tokens: int) -> list[int]:
        """Grow sequence ``seq`` to hold ``total_tokens`` tokens; returns its block list."""
        row = self.owned.setdefault(seq, [])
        while len(row) * self.block_size < total_tokens:
            if not self.free:
                raise UsageError(f"pool of {self.num_blocks} blocks is full")
            row.append(self.free.pop())
        return row

    def share(self, seq: int, prefix_blocks: Sequence[int]) -> list[int]:
        """Start sequence ``seq`` on existing full blocks (prefix caching, read-only)."""
        self.owned[seq] = list(prefix_blocks)
        return self.owned[seq]
