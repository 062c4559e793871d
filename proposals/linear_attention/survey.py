"""Which recurrent mixers of the installed transformers LinearAttention-27 expresses.

Gated-delta mixers are discovered from transformers itself (a ``*GatedDeltaNet`` class in a
``modeling_<type>.py``); each is built from a tiny seeded config, converted by
:mod:`proposals.linear_attention.hf` and run on onnxruntime against the module's own float64
forward: prefill of 5 tokens, then 3 decode steps on the carried conv and recurrent states.
The other recurrent families are listed with the mixer class they use in transformers (looked
up, so a renamed class shows) and what the op would need for them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from functools import cache

import numpy as np

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.torch_reference import float64_copy, float64_mode, load_seeded, norm_centre

TINY = {
    "hidden_size": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
    "linear_conv_kernel_dim": 4,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "intermediate_size": 24,
    "vocab_size": 64,
}
PREFILL, DECODE = 5, 3


@dataclass(frozen=True)
class Family:
    """A recurrent family of transformers and what LinearAttention-27 does with it."""

    model_type: str
    mixer: str  # the mixer class in transformers.models.<type>.modeling_<type>
    verdict: str  # converted | expressible | no state op needed | refused
    reason: str


# Families whose mixer is not a gated delta rule: the semantic reason, read from their code.
OTHERS = (
    Family(
        "kimi_linear",
        "KimiLinearDeltaAttention",
        "expressible",
        "Kimi Delta Attention is gated_delta with a per-key-dimension decay (decay (B, T, H*d_k)); the gates are "
        "low-rank projections and the output gate a sigmoid-gated RMSNorm, all standard ops. Not converted here",
    ),
    Family(
        "minimax",
        "MiniMaxLightningAttention",
        "expressible",
        "lightning attention is rule gated with a constant per-head log-decay (-slope_h, expanded over T) and "
        "scale 1; its output norm and sigmoid gate are standard ops. Not converted here",
    ),
    Family(
        "mamba",
        "MambaMixer",
        "refused",
        "Mamba-1's selective scan decays each state element by exp(dt[d] * A[d, n]): the decay depends on the "
        "value channel d as well as the key index n, and LinearAttention-27 decays whole key rows only "
        "(per head or per key dimension)",
    ),
    Family(
        "falcon_h1",
        "FalconH1Mixer",
        "expressible",
        "a Mamba-2 mixer with muP scalings (ssm_in_multiplier on the input, mup_vector on the projections: "
        "standard Mul) and, by default, no RMSNorm before out_proj (mamba_rms_norm=False). Not converted here",
    ),
    Family("falcon_mamba", "FalconMambaMixer", "refused", "a Mamba-1 selective scan (see mamba)"),
    Family("jamba", "JambaMambaMixer", "refused", "its recurrent layers are Mamba-1 selective scans (see mamba)"),
    Family(
        "lfm2",
        "Lfm2ShortConv",
        "no state op needed",
        "LFM2's recurrent layers are gated short convolutions: Conv over Concat(past_conv, x) with the last "
        "K-1 inputs as state, standard ops only",
    ),
    Family(
        "recurrent_gemma",
        "RecurrentGemmaRglru",
        "refused",
        "RG-LRU is an element-wise recurrence h = a * h + sqrt(1 - a^2) * (i * x) on a vector state; the op "
        "only reaches it with one head per channel and d_k = d_v = 1, which no backend would run as one",
    ),
    Family(
        "rwkv",
        "RwkvSelfAttention",
        "refused",
        "RWKV-4's WKV is a ratio of two per-channel recurrences with a bonus u for the current token and a "
        "running max for stability; the op has no normaliser and reads the current token with the same weight",
    ),
)


# Mamba-2 (SSD) mixers: model type -> (mixer class, tiny config fields). The hybrids copy
# Mamba2Mixer under their own names and config fields.
_MAMBA_SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 64, "num_attention_heads": 2}
MAMBA2 = {
    "mamba2": ("Mamba2Mixer", {"num_heads": 4, "head_dim": 8, "state_size": 6, "n_groups": 2, "expand": 2}),
    "bamba": (
        "BambaMixer",
        {"mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_state": 6, "mamba_n_groups": 2, "mamba_expand": 2},
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridMambaLayer",
        {"mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_state": 6, "mamba_n_groups": 2, "mamba_expand": 2},
    ),
    "nemotron_h": (
        "NemotronHMamba2Mixer",
        {"mamba_num_heads": 4, "mamba_head_dim": 8, "ssm_state_size": 6, "n_groups": 2, "expand": 2},
    ),
}
MAMBA2_NOTE = (
    "the SSD scan is rule gated: query = C, key = B (each group repeated to its heads), value = dt * x, "
    "decay = dt * A per head, scale 1, then + D * x; the state is transformers' ssm_state transposed"
)


def gated_delta_mixers() -> dict[str, type]:
    """model_type -> the ``*GatedDeltaNet`` class of the installed transformers."""
    import transformers.models as models

    found = {}
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        spec = importlib.util.find_spec(f"transformers.models.{info.name}.modeling_{info.name}")
        if spec is None or "GatedDeltaNet" not in spec.loader.get_source(spec.name):
            continue
        module = importlib.import_module(spec.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if name.endswith("GatedDeltaNet") and cls.__module__ == module.__name__:
                found[info.name] = cls
    return found


def tiny_config(model_type: str):
    """The smallest text config of ``model_type`` that has gated-delta fields."""
    module = importlib.import_module(f"transformers.models.{model_type}.configuration_{model_type}")
    for _, cls in sorted(inspect.getmembers(module, inspect.isclass)):
        if cls.__module__ != module.__name__ or not hasattr(cls, "model_type"):
            continue
        try:
            config = cls(**TINY)
        except Exception:  # noqa: BLE001 - a multimodal wrapper or a validator: not this class
            continue
        layers = getattr(config, "layer_types", None)
        if getattr(config, "linear_num_value_heads", None) == TINY["linear_num_value_heads"] and layers:
            return config
    raise UsageError(f"{model_type}: no config class with gated-delta fields")


def tiny_mixer(model_type: str, seed: int = 0):
    """The family's gated-delta mixer of layer 0 with seeded weights (A_log and dt_bias drawn
    too, norm weights around 1)."""
    mixers = gated_delta_mixers()
    if model_type not in mixers:
        valid = ", ".join(sorted([*mixers, *MAMBA2]))
        raise UsageError(f"unsupported recurrent family {model_type!r} for the converter; valid: {valid}")
    config = tiny_config(model_type)
    layer = config.layer_types.index("linear_attention")
    return load_seeded(mixers[model_type](config, layer).eval(), seed, 0.5, centre=norm_centre)


def module_output(mixer, hidden_states: np.ndarray) -> np.ndarray:
    """The mixer's float64 forward on the whole sequence (no cache: the chunked path)."""
    import torch

    reference = float64_copy(mixer)
    with float64_mode():
        return reference(torch.from_numpy(hidden_states.astype(np.float64))).numpy()


def tiny_mamba2(model_type: str, seed: int = 0):
    """The family's Mamba-2 mixer, built from a tiny config, seeded (norm weights around 1)."""
    if model_type not in MAMBA2:
        raise UsageError(f"no Mamba-2 mixer for {model_type!r}; valid: {', '.join(sorted(MAMBA2))}")
    name, fields = MAMBA2[model_type]
    configs = importlib.import_module(f"transformers.models.{model_type}.configuration_{model_type}")
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    config_cls = next(
        cls for _, cls in inspect.getmembers(configs, inspect.isclass)
        if cls.__module__ == configs.__name__ and getattr(cls, "model_type", None) == model_type
    )  # fmt: skip
    config = config_cls(**_MAMBA_SIZES, **fields)
    return load_seeded(getattr(modeling, name)(config, layer_idx=0).eval(), seed, 0.5, centre=norm_centre)


@dataclass(frozen=True)
class Check:
    model_type: str
    mixer: str
    max_abs_error: float
    max_abs_output: float
    nodes: dict[str, int]


def check_family(model_type: str, seed: int = 0) -> Check:
    """Convert the tiny mixer; run prefill then decode on onnxruntime against transformers."""
    from generator.ort import session
    from proposals.linear_attention import hf

    if model_type in MAMBA2:
        mixer = tiny_mamba2(model_type, seed)
        weights = hf.mamba2_weights(mixer)
        model = hf.mamba2_model(weights)
        state_shape = (2, weights.heads, weights.state_size, weights.head_dim)
    else:
        mixer = tiny_mixer(model_type, seed)
        weights = hf.gated_delta_weights(mixer)
        model = hf.mixer_model(weights)
        state_shape = (2, weights.v_heads, weights.d_k, weights.d_v)
    sess = session(model)
    hidden = seeded(seed + 1).randn(2, PREFILL + DECODE, mixer.hidden_size).astype(np.float32)
    expected = module_output(mixer, hidden)
    states = {
        "past_conv": np.zeros((2, weights.conv_channels, weights.kernel - 1), np.float32),
        "past_state": np.zeros(state_shape, np.float32),
    }
    pieces = []
    for start, stop in [(0, PREFILL), *((t, t + 1) for t in range(PREFILL, PREFILL + DECODE))]:
        output, conv, state = sess.run(None, {"hidden_states": hidden[:, start:stop], **states})
        states = {"past_conv": conv, "past_state": state}
        pieces.append(output)
    got = np.concatenate(pieces, axis=1)
    nodes: dict[str, int] = {}
    for node in model.graph.node:
        nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
    return Check(
        model_type,
        type(mixer).__name__,
        float(np.abs(got - expected).max()),
        float(np.abs(expected).max()),
        dict(sorted(nodes.items())),
    )


@cache
def survey() -> tuple[list[Check], list[Family]]:
    """Every discovered gated-delta family and every Mamba-2 family checked (a Mamba-2 hybrid
    whose mixer does not convert is listed with the converter's reason), then the other
    recurrent families."""
    checks = [check_family(t) for t in sorted(gated_delta_mixers())]
    others = []
    for model_type in sorted(MAMBA2):
        try:
            result = check_family(model_type)
        except Exception as err:  # noqa: BLE001 - a mixer the converter cannot read is data
            reason = f"{MAMBA2_NOTE}; not converted: {type(err).__name__}: {str(err).splitlines()[0]}"
            others.append(Family(model_type, MAMBA2[model_type][0], "expressible", reason))
            continue
        if result.max_abs_error <= 1e-5 + 1e-5 * result.max_abs_output:
            checks.append(result)
        else:
            reason = f"{MAMBA2_NOTE}; the converter's output differs by {result.max_abs_error:.1e}"
            others.append(Family(model_type, MAMBA2[model_type][0], "expressible", reason))
    return checks, others + list(OTHERS)


def module_steps(model_type: str, hidden_states: np.ndarray, chunks: list[int], seed: int = 0):
    """The mixer's float64 forward chunk by chunk through transformers' own cache: per chunk
    ``(output, conv_state, recurrent_state)``. transformers keeps the last K conv inputs; the
    graph's ``present_conv`` is the last K-1 (the oldest one is never read again)."""
    import torch
    from transformers import DynamicCache

    mixer = tiny_mixer(model_type, seed)
    config = tiny_config(model_type)
    layer = mixer.layer_idx
    reference = float64_copy(mixer)
    steps, start = [], 0
    with float64_mode():
        cache = DynamicCache(config=config)
        for length in chunks:
            chunk = torch.from_numpy(hidden_states[:, start : start + length].astype(np.float64))
            output = reference(chunk, cache=cache)
            # copies: the cache updates its tensors in place at the next chunk
            conv = cache.get_conv_state(layer, state_idx=0)[..., 1:].numpy().copy()
            steps.append((output.numpy(), conv, cache.get_recurrent_state(layer, state_idx=0).numpy().copy()))
            start += length
    return steps
