"""Reference semantics of LinearAttention-27 (onnx 1.23.2), in numpy float64, written from
the schema text (``onnx.defs.get_schema("LinearAttention", 27).doc``).

Two independent evaluations of the same recurrence:

- :func:`linear_attention` runs it token by token, exactly as the schema writes it;
- :func:`linear_attention_chunked` runs it chunk by chunk in the closed form an
  implementation would use for prefill (the WY / "UT transform" of the delta rule: one
  triangular solve per chunk), which the schema allows ("may be implemented using
  chunk-parallel algorithms") and says ``chunk_size`` must not change.

Both validate their inputs the same way: each bad input is one :class:`LinearAttentionError`
line naming what is valid. Where the schema text leaves a choice open, the choice made here is
the one written on the proposal page (Normative notes); each is marked ``# note:`` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("linear", "gated", "delta", "gated_delta")
GATED = ("gated", "gated_delta")  # rules that read ``decay``
DELTA = ("delta", "gated_delta")  # rules that read ``beta``


class LinearAttentionError(ValueError):
    """One line: what is wrong with a LinearAttention input and what is valid."""


@dataclass(frozen=True)
class Heads:
    """The unpacked geometry of one call."""

    batch: int
    seq: int
    q_heads: int
    kv_heads: int
    d_k: int
    d_v: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.kv_heads, self.d_k, self.d_v)


def check(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None,
    decay: np.ndarray | None,
    beta: np.ndarray | None,
    *,
    q_num_heads: int,
    kv_num_heads: int,
    update_rule: str,
    chunk_size: int = 64,
) -> Heads:
    """Validate one call's inputs and attributes; return its geometry."""
    if update_rule not in RULES:
        raise LinearAttentionError(f"unknown update_rule {update_rule!r}; valid: {', '.join(RULES)}")
    if q_num_heads < 1 or kv_num_heads < 1 or q_num_heads % kv_num_heads:
        raise LinearAttentionError(
            f"q_num_heads={q_num_heads} is not a positive multiple of kv_num_heads={kv_num_heads}; "
            "valid: kv_num_heads >= 1 dividing q_num_heads (GQA groups of equal size)"
        )
    if chunk_size < 1:
        raise LinearAttentionError(f"chunk_size={chunk_size}; valid: an integer >= 1 (a tuning hint)")
    for name, array in (("query", query), ("key", key), ("value", value)):
        if array.ndim != 3:
            raise LinearAttentionError(f"{name} has shape {array.shape}; valid: rank 3 (B, T, heads*head_size)")
    batch, seq, q_hidden = query.shape
    if q_hidden % q_num_heads:
        raise LinearAttentionError(f"query's last dim {q_hidden} is not a multiple of q_num_heads={q_num_heads}")
    d_k = q_hidden // q_num_heads
    if value.shape[2] % kv_num_heads:
        raise LinearAttentionError(
            f"value's last dim {value.shape[2]} is not a multiple of kv_num_heads={kv_num_heads}"
        )
    heads = Heads(batch, seq, q_num_heads, kv_num_heads, d_k, value.shape[2] // kv_num_heads)
    for name, array in (("key", key), ("value", value)):
        last = kv_num_heads * (d_k if name == "key" else heads.d_v)
        if array.shape != (batch, seq, last):
            raise LinearAttentionError(f"{name} has shape {array.shape}; valid: {(batch, seq, last)}")
    if past_state is not None and past_state.shape != heads.state_shape:
        raise LinearAttentionError(
            f"past_state has shape {past_state.shape}; valid: (B, H_kv, d_k, d_v) = {heads.state_shape}"
        )
    _check_gate("decay", decay, update_rule in GATED, update_rule, (kv_num_heads, kv_num_heads * d_k), heads)
    _check_gate("beta", beta, update_rule in DELTA, update_rule, (kv_num_heads, 1), heads)
    return heads


def _check_gate(name: str, array, needed: bool, rule: str, lasts: tuple[int, int], heads: Heads) -> None:
    users = GATED if name == "decay" else DELTA
    if needed and array is None:
        raise LinearAttentionError(
            f"update_rule {rule!r} needs a {name} input; valid rules without it: "
            f"{', '.join(r for r in RULES if r not in users)}"
        )
    if not needed and array is not None:
        raise LinearAttentionError(
            f"update_rule {rule!r} takes no {name} input; rules that read it: {', '.join(users)}"
        )
    if array is None:
        return
    shapes = sorted({(heads.batch, heads.seq, last) for last in lasts})
    if array.shape not in shapes:
        valid = " or ".join(str(s) for s in shapes)
        raise LinearAttentionError(f"{name} has shape {array.shape}; valid: {valid}")


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, H*D) -> (B, H, T, D), in float64."""
    b, t, hd = x.shape
    return x.astype(np.float64).reshape(b, t, heads, hd // heads).transpose(0, 2, 1, 3)


def _gates(decay, beta, heads: Heads) -> tuple[np.ndarray, np.ndarray]:
    """``g`` as (B, H_kv, T, d_k) log-decays and ``beta`` as (B, H_kv, T, 1); absent ones are
    the identity (g = 0, i.e. no decay; beta = 1 with no delta correction is handled by the rule)."""
    b, t, h = heads.batch, heads.seq, heads.kv_heads
    if decay is None:
        g = np.zeros((b, h, t, heads.d_k))
    elif decay.shape[2] == h * heads.d_k:  # per key dimension (GLA, KDA)
        g = _heads(decay, h)
    else:  # note: one log-decay per head, broadcast over d_k (and d_v)
        g = np.broadcast_to(_heads(decay, h), (b, h, t, heads.d_k))
    if beta is None:
        rate = np.ones((b, h, t, 1))
    else:  # note: (B, T, 1) is one rate shared by every KV head
        rate = np.broadcast_to(_heads(beta, beta.shape[2]), (b, h, t, 1))
    return g, rate


def _scale(scale: float, d_k: int) -> float:
    # note: scale == 0.0 means "use the default" 1/sqrt(d_k); a zero output scale is unrepresentable.
    return 1.0 / np.sqrt(d_k) if scale == 0.0 else float(scale)


def _pack(output: np.ndarray, state: np.ndarray, query, past_state) -> tuple[np.ndarray, np.ndarray]:
    """(B, H_q, T, d_v) -> (B, T, H_q*d_v) in query's dtype; the state in past_state's dtype."""
    b, h, t, d = output.shape
    packed = output.transpose(0, 2, 1, 3).reshape(b, t, h * d).astype(query.dtype)
    return packed, state.astype(query.dtype if past_state is None else past_state.dtype)


# --8<-- [start:semantics]
def linear_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None = None,
    decay: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    q_num_heads: int,
    kv_num_heads: int,
    update_rule: str = "gated_delta",
    scale: float = 0.0,
    chunk_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """LinearAttention-27, token by token: ``(output (B, T, H_q*d_v), present_state (B, H_kv, d_k, d_v))``.

    For every token t and KV head (``S`` is d_k x d_v, ``g_t`` the log-decay, ``b_t`` the rate):

    - linear:      S = S + k_t v_t^T
    - gated:       S = exp(g_t) * S + k_t v_t^T
    - delta:       S = S + b_t k_t (v_t - S^T k_t)^T
    - gated_delta: S = exp(g_t) * S;  S = S + b_t k_t (v_t - S^T k_t)^T
    - every rule:  o_t = scale * S^T q_t, query head h reading KV head h // (H_q / H_kv)
    """
    heads = check(
        query,
        key,
        value,
        past_state,
        decay,
        beta,
        q_num_heads=q_num_heads,
        kv_num_heads=kv_num_heads,
        update_rule=update_rule,
        chunk_size=chunk_size,
    )
    q, k, v = _heads(query, q_num_heads), _heads(key, kv_num_heads), _heads(value, kv_num_heads)
    g, rate = _gates(decay, beta, heads)
    state = np.zeros(heads.state_shape) if past_state is None else past_state.astype(np.float64)
    out = np.zeros((heads.batch, q_num_heads, heads.seq, heads.d_v))
    for t in range(heads.seq):
        state = np.exp(g[:, :, t, :, None]) * state  # decay scales the key rows of S
        v_t = v[:, :, t]
        if update_rule in DELTA:  # what S already returns for k_t, replaced at rate b_t
            v_t = rate[:, :, t] * (v_t - np.einsum("bhkv,bhk->bhv", state, k[:, :, t]))
        state = state + k[:, :, t, :, None] * v_t[:, :, None, :]
        shared = np.repeat(state, heads.group, axis=1)  # KV head of each query head
        out[:, :, t] = _scale(scale, heads.d_k) * np.einsum("bhk,bhkv->bhv", q[:, :, t], shared)
    return _pack(out, state, query, past_state)


# --8<-- [end:semantics]


def linear_attention_chunked(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None = None,
    decay: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    q_num_heads: int,
    kv_num_heads: int,
    update_rule: str = "gated_delta",
    scale: float = 0.0,
    chunk_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """The same op, ``chunk_size`` tokens at a time (the last chunk may be shorter).

    Inside a chunk starting from state ``S0``, with cumulative log-decays ``G_t``:
    ``S_t = e^{G_t} S0 + sum_{j<=t} e^{G_t - G_j} k_j u_j^T``. The delta rule's updates
    ``u`` solve one unit lower-triangular system ``(I + diag(b) A) U = diag(b) (V - K~ S0)``
    with ``A[t, j] = k_t . (e^{G_t - G_j} k_j)`` for ``j < t`` and ``K~_t = e^{G_t} k_t``;
    without the delta rule ``U = V``.
    """
    heads = check(
        query,
        key,
        value,
        past_state,
        decay,
        beta,
        q_num_heads=q_num_heads,
        kv_num_heads=kv_num_heads,
        update_rule=update_rule,
        chunk_size=chunk_size,
    )
    q, k, v = _heads(query, q_num_heads), _heads(key, kv_num_heads), _heads(value, kv_num_heads)
    g, rate = _gates(decay, beta, heads)
    q = q.reshape(heads.batch, heads.kv_heads, heads.group, heads.seq, heads.d_k)  # query heads by KV head
    state = np.zeros(heads.state_shape) if past_state is None else past_state.astype(np.float64)
    out = np.zeros((heads.batch, heads.kv_heads, heads.group, heads.seq, heads.d_v))
    for start in range(0, heads.seq, chunk_size):
        span = slice(start, min(start + chunk_size, heads.seq))
        state, out[:, :, :, span] = _chunk(
            state,
            q[:, :, :, span],
            k[:, :, span],
            v[:, :, span],
            g[:, :, span],
            rate[:, :, span],
            delta=update_rule in DELTA,
            scale=_scale(scale, heads.d_k),
        )
    out = out.reshape(heads.batch, heads.q_heads, heads.seq, heads.d_v)
    return _pack(out, state, query, past_state)


def _chunk(state, q, k, v, g, rate, *, delta: bool, scale: float):
    """One chunk: (state (B,H,dk,dv), q (B,H,G,C,dk), k (B,H,C,dk), v (B,H,C,dv), g (B,H,C,dk),
    rate (B,H,C,1)) -> (state after the chunk, output (B,H,G,C,dv))."""
    length = k.shape[2]
    cum = np.cumsum(g, axis=2)  # G_t
    # decay from token j to token t on each key dimension, for j <= t (zero above the diagonal)
    lower = np.tril(np.ones((length, length)))
    between = np.exp(cum[:, :, :, None, :] - cum[:, :, None, :, :]) * lower[..., None]  # (B,H,t,j,dk)
    k_from_start = k * np.exp(cum)  # K~
    if delta:
        a = np.einsum("bhtd,bhtjd,bhjd->bhtj", k, between, k) * np.tril(np.ones((length, length)), -1)
        system = np.eye(length) + rate * a
        rhs = rate * (v - k_from_start @ state)
        u = np.linalg.solve(system, rhs)
    else:
        u = v
    scores = np.einsum("bhgtd,bhtjd,bhjd->bhgtj", q, between, k)  # q_t . e^{G_t - G_j} k_j, j <= t
    carried = np.einsum("bhgtd,bhdv->bhgtv", q * np.exp(cum)[:, :, None], state)
    out = scale * (carried + scores @ u[:, :, None])
    to_end = np.exp(cum[:, :, -1:, :] - cum)  # e^{G_C - G_j}
    state = np.exp(cum[:, :, -1, :, None]) * state + np.einsum("bhjd,bhjv->bhdv", k * to_end, u)
    return state, out
