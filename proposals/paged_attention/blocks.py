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


# --8<-- [start:block_manager]
class BlockManager:
    """Ref-counted blocks for a serving loop: allocated as tokens arrive, freed when the last
    sequence holding them lets go, and shared between sequences in two ways.

    * **Prefix sharing, block-aligned.** A block that is full holds the K/V of a known token
      prefix; :meth:`register_full` records it under that prefix (the sequence's whole token
      history up to the block's end, compared exactly). :meth:`admit` starts a new sequence on
      the longest chain of registered blocks its tokens begin with. Shared blocks are full, so
      nobody writes to them again: this kind of sharing needs no copy.
    * **Forks, copy-on-write.** :meth:`fork` gives a sequence another's blocks, its partly
      filled last block included (beam search). :meth:`writable` returns the copies to make
      before a write lands in a block somebody else still reads.

    A block whose count drops to zero goes back to the free list and leaves the prefix table.
    """

    def __init__(self, num_blocks: int, block_size: int, *, seed: int | None = 0, share_prefixes: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise UsageError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.share_prefixes = share_prefixes  # off: a baseline where every sequence owns all its blocks
        # seeded shuffle (as BlockAllocator), so no test sees contiguous blocks by accident
        order = range(num_blocks) if seed is None else seeded(seed).permutation(num_blocks)
        self.free: list[int] = [int(b) for b in order]
        self.refs = [0] * num_blocks
        self.tables: dict[int, list[int]] = {}  # sequence -> its blocks, in logical order
        self.prefixes: dict[tuple[int, ...], int] = {}  # token prefix -> the full block ending it
        self.prefix_of: dict[int, tuple[int, ...]] = {}  # registered block -> its prefix

    @property
    def used(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self.free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def shared_prefix(self, tokens: Sequence[int]) -> list[int]:
        """The registered blocks ``tokens`` begins with, at most up to its second-last token
        (the last one is always computed: its logits choose the next token)."""
        blocks = []
        for end in range(self.block_size, len(tokens), self.block_size):
            block = self.prefixes.get(tuple(tokens[:end]))
            if block is None:
                break
            blocks.append(block)
        return blocks

    def admit(self, seq: int, tokens: Sequence[int]) -> int:
        """Start ``seq`` on its shared prefix blocks; returns how many tokens they hold."""
        if seq in self.tables:
            raise UsageError(f"sequence {seq} already holds blocks")
        blocks = self.shared_prefix(tokens)
        for block in blocks:
            self.refs[block] += 1
        self.tables[seq] = blocks
        return len(blocks) * self.block_size

    def can_grow(self, seq: int, total_tokens: int) -> bool:
        return self.blocks_for(total_tokens) - len(self.tables[seq]) <= len(self.free)

    def grow(self, seq: int, total_tokens: int) -> list[int]:
        """Allocate blocks until ``seq`` can hold ``total_tokens``; all or nothing."""
        row = self.tables[seq]
        need = self.blocks_for(total_tokens) - len(row)
        if need > len(self.free):
            raise UsageError(f"sequence {seq} needs {need} more blocks, {len(self.free)} are free")
        for _ in range(max(need, 0)):
            block = self.free.pop()
            self.refs[block] = 1
            row.append(block)
        return row

    def register_full(self, seq: int, tokens: Sequence[int]) -> None:
        """Record each full block of ``seq`` (whose K/V for ``tokens`` is now written) under
        its prefix, so later sequences with the same prefix can share it."""
        if not self.share_prefixes:
            return
        row = self.tables[seq]
        for index in range(len(tokens) // self.block_size):
            block = row[index]
            if block in self.prefix_of:
                continue
            key = tuple(tokens[: (index + 1) * self.block_size])
            if key not in self.prefixes:  # the first writer of a prefix owns the entry
                self.prefixes[key] = block
                self.prefix_of[block] = key

    def fork(self, parent: int, child: int) -> None:
        """``child`` becomes a copy of ``parent``: same blocks, counts raised (no copy yet)."""
        self.release(child)
        self.tables[child] = list(self.tables[parent])
        for block in self.tables[child]:
            self.refs[block] += 1

    def writable(self, seq: int, start: int, end: int) -> list[tuple[int, int]]:
        """Give ``seq`` private copies of the shared blocks positions [start, end) fall in;
        returns the (source, destination) block copies the caller makes in the pool."""
        row, copies = self.tables[seq], []
        for index in range(start // self.block_size, min(self.blocks_for(end), len(row))):
            block = row[index]
            if self.refs[block] > 1:
                if not self.free:
                    raise UsageError(f"sequence {seq} needs a block to copy into, none is free")
                fresh = self.free.pop()
                self.refs[fresh], row[index] = 1, fresh
                self.refs[block] -= 1
                copies.append((block, fresh))
        return copies

    def release(self, seq: int) -> None:
        """``seq`` lets go of its blocks; those nobody else holds are free again."""
        for block in self.tables.pop(seq, []):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                key = self.prefix_of.pop(block, None)
                if key is not None:
                    del self.prefixes[key]
                self.free.append(block)


# --8<-- [end:block_manager]
