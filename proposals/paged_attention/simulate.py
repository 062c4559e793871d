"""KV-cache memory simulator: how much of a fixed KV budget holds real tokens, and how
many sequences fit, under contiguous and paged allocation.

Workload (seeded, stated on the page):

* ``max_len`` = 2048 context; prompt = optional shared system prompt + own prompt;
* own prompt ~ lognormal, median 160 tokens, sigma 1.0, clipped to [8, 1536];
* output ~ lognormal, median 200 tokens, sigma 1.0, clipped to [8, max_len - prompt];
* 60% of requests start with one of 4 shared system prompts of 128, 256, 384 or 512 tokens;
* each live sequence is observed at a uniform random point of its generation.

Budget: KV slots for 32 sequences at max length (65,536 token slots). Sequences are
admitted in arrival order until the next one does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from generator.onnx_build import seeded

MAX_LEN = 2048
BUDGET_SLOTS = 32 * MAX_LEN
SYSTEM_PROMPTS = (128, 256, 384, 512)
SHARED_FRACTION = 0.6


@dataclass(frozen=True)
class Request:
    prefix: int  # index into SYSTEM_PROMPTS, -1 for none
    prompt: int  # whole prompt, shared part included
    output: int  # tokens it will generate
    current: int  # tokens in its cache at the snapshot
    system_prompts: tuple[int, ...] = SYSTEM_PROMPTS  # lengths ``prefix`` indexes

    @property
    def shared(self) -> int:
        return self.system_prompts[self.prefix] if self.prefix >= 0 else 0


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    sequences_fit: int
    waste_share: float  # allocated slots holding no token / allocated slots
    slots_per_sequence: float


def workload(n: int = 4000, seed: int = 0) -> list[Request]:
    """The seeded request stream described in the module docstring."""
    rng = seeded(seed)
    own = np.clip(np.round(rng.lognormal(np.log(160), 1.0, n)), 8, 1536).astype(int)
    prefix = np.where(rng.rand(n) < SHARED_FRACTION, rng.randint(0, len(SYSTEM_PROMPTS), n), -1)
    shared = np.array([SYSTEM_PROMPTS[p] if p >= 0 else 0 for p in prefix])
    prompt = np.minimum(own + shared, MAX_LEN - 8)
    output = np.clip(np.round(rng.lognormal(np.log(200), 1.0, n)), 8, MAX_LEN - prompt).astype(int)
    current = prompt + np.ceil(rng.rand(n) * output).astype(int)
    return [Request(*map(int, row)) for row in zip(prefix, prompt, output, current, strict=True)]


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def contiguous(
    requests: Sequence[Request], reserve: str, *, max_len: int = MAX_LEN, budget: int = BUDGET_SLOTS
) -> PolicyResult:
    """One contiguous buffer per sequence, sized at ``max`` length or at the ``actual`` final
    length (an oracle that knows the output length in advance)."""
    used = allocated = fit = 0
    for r in requests:
        size = max_len if reserve == "max" else r.prompt + r.output
        if allocated + size > budget:
            break
        used, allocated, fit = used + r.current, allocated + size, fit + 1
    return PolicyResult(f"contiguous, {reserve} length", fit, 1 - used / allocated, allocated / fit)


def paged(
    requests: Sequence[Request], block_size: int, share_prefix: bool = False, *, budget: int = BUDGET_SLOTS
) -> PolicyResult:
    """Blocks allocated as tokens arrive; with ``share_prefix`` the full blocks of a shared
    system prompt are stored once (vLLM prefix caching caches full blocks only)."""
    stored = allocated = fit = 0
    cached: set[int] = set()
    for r in requests:
        shared_blocks = r.shared // block_size if share_prefix else 0
        new_prefix = shared_blocks if r.prefix not in cached else 0
        own = _blocks(r.current - shared_blocks * block_size, block_size)
        size = (own + new_prefix) * block_size
        if allocated + size > budget:
            break
        if shared_blocks:
            cached.add(r.prefix)
        stored += r.current - shared_blocks * block_size + new_prefix * block_size
        allocated, fit = allocated + size, fit + 1
    name = f"paged, block {block_size}" + (", prefix sharing" if share_prefix else "")
    return PolicyResult(name, fit, 1 - stored / allocated, allocated / fit)


def simulate(seed: int = 0) -> list[PolicyResult]:
    """Every policy on the same request stream."""
    requests = workload(seed=seed)
    return [
        contiguous(requests, "max"),
        contiguous(requests, "actual"),
        *(paged(requests, b) for b in (8, 16, 32)),
        paged(requests, 16, share_prefix=True),
    ]


def table(results: Sequence[PolicyResult]) -> str:
    """The results as a Markdown table."""
    rows = ["| allocation | sequences that fit | memory wasted | slots per sequence |", "|---|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.policy} | {r.sequences_fit} | {r.waste_share:.1%} | {r.slots_per_sequence:.0f} |")
    return "\n".join(rows)


def rows(results: Sequence[PolicyResult]) -> list[dict]:
    return [asdict(r) for r in results]
