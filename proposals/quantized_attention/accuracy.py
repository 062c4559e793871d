"""Accuracy study: every cache dtype × granularity against float32 (``python -m ...accuracy``).

Two settings, results in ``bench/accuracy.json`` (committed, rendered on the page):

- **synthetic**: one attention read of 256 cached tokens (8 kv heads, head_dim 128)
  with 4 outlier key channels (×10), in float64 numpy from the reference: relative
  error of the attention output. Static scales are calibrated on the same tokens.
- **decoders**: the text pipeline's seeded tiny Llama and Qwen3 (``build_decoder``; head_dim
  32 instead of 16 so that groups of 32 apply), with
  each layer's new K/V rows replaced by ``DQ(Q(rows))`` before the TensorScatter: exactly
  what a quantized cache returns on read, since every row is quantized once, when written.
  Static scales come from the float32 prefill of the prompt. Greedy agreement: the share
  of 64 greedy tokens equal to float32's; KL: mean KL(fp32 || quantized) of the next-token
  distributions over the float32 continuation, teacher-forced. Run on ORT CPU, 1 thread;
  figures are rounded to 3 significant digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import TapeBuilder

from generator import bench
from generator.onnx_build import seeded, stamp
from generator.ort import session
from proposals.kv_cache.reference import attention
from proposals.quantized_attention import build, reference
from proposals.quantized_attention.reference import CacheQuant

TOPIC = "quantized_attention"
NEW_TOKENS = 64
PROMPT = [5, 17, 42, 9, 33, 71, 8, 23, 64, 12, 90, 3, 55, 27, 81, 14]
HEAD_DIM = 32  # the pipeline's tiny configs use 16; 32 lets per_token_group (blocks of 32) apply
HUGE_BLOCK = 1 << 20  # per-channel Q/DQ on rows of any length: one block over the tokens


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def configs() -> list[tuple[str, str, str]]:
    """(label, key granularity, value granularity) per dtype: each pair, plus KIVI's split."""
    rows = [(f"{d} K {g} / V {g}", d, g, g) for d, g in reference.valid_pairs()]
    rows += [(f"{d} K per_channel / V per_token", d, "per_channel", "per_token") for d in ("int8", "int4")]
    return rows


def _quant(dtype: str, granularity: str, sample: np.ndarray) -> CacheQuant:
    if granularity in reference.DYNAMIC:
        return CacheQuant(dtype, granularity)
    return CacheQuant(dtype, granularity, *reference.calibrate(sample, granularity, dtype))


def _roundtrip(quant: CacheQuant, rows: np.ndarray) -> np.ndarray:
    codes, scales = reference.quantize_rows(quant, rows)
    return reference.dequantize_cache(quant, codes, None if scales is None else scales)


OUTLIER_CHANNELS = (3, 17, 64, 100)
OUTLIER_SCALE = 10.0
SYNTHETIC_TOKENS = 256


# --8<-- [start:synthetic]
def synthetic_keys(
    rng: np.random.RandomState, tokens: int = SYNTHETIC_TOKENS, heads: int = 8, dim: int = 128
) -> np.ndarray:
    """Gaussian keys whose OUTLIER_CHANNELS are OUTLIER_SCALE times larger in every token
    (the outlier channels KIVI and KVQuant report)."""
    keys = rng.randn(1, heads, tokens, dim)
    keys[..., list(OUTLIER_CHANNELS)] *= OUTLIER_SCALE
    return keys.astype(np.float32)


def synthetic_error(dtype: str, k_granularity: str, v_granularity: str | None, seed: int = 0) -> float:
    """‖y_quant - y‖ / ‖y‖ of one decode query over the synthetic cache (float64 reference)."""
    rng = seeded(seed)
    keys = synthetic_keys(rng)
    values = rng.randn(*keys.shape).astype(np.float32)
    q = (rng.randn(1, 32, 1, keys.shape[-1]) * 0.3).astype(np.float32)
    exact = attention(q.astype(np.float64), keys.astype(np.float64), values.astype(np.float64))
    k = _roundtrip(_quant(dtype, k_granularity, keys), keys)
    v = values if v_granularity is None else _roundtrip(_quant(dtype, v_granularity, values), values)
    approx = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


# --8<-- [end:synthetic]


def _fake_quant_rows(
    op: TapeBuilder, prefix: str, rows: ir.Value, quant: CacheQuant, batch: ir.Value, dim: int
) -> ir.Value:
    """DQ(Q(rows)) with the builder's scale handling (static Expanded, or dynamic per row)."""
    if quant.dynamic:
        scale, zero = build.dynamic_scale(op, prefix, rows, quant, dim), None
        attrs = {"axis": 3, "block_size": build.group_size(quant, dim)}
    else:
        scale, zero = build.static_scale(op, prefix, quant, batch)
        attrs = {} if quant.granularity == "per_tensor" else {"axis": 2, "block_size": HUGE_BLOCK}
    extra = [] if zero is None else [zero]
    out_type = {} if zero is not None else {"output_dtype": build.CODE_TYPES[quant.dtype]}
    codes = op.QuantizeLinear(rows, scale, *extra, **attrs, **out_type)
    return op.DequantizeLinear(codes, scale, *extra, **attrs)


def quantize_cache_writes(model: onnx.ModelProto, quants: dict[str, CacheQuant], head_dim: int) -> onnx.ModelProto:
    """Insert DQ(Q(.)) on the update input of each ``present_{key,value}_{i}`` TensorScatter.

    ``quants`` maps ``key_{i}`` / ``value_{i}`` to that cache's CacheQuant.
    """
    ir_model = ir.serde.deserialize_model(model)
    graph = ir_model.graph
    for node in [n for n in graph if n.op_type == "TensorScatter"]:
        name = node.outputs[0].name.removeprefix("present_")
        quant, rows = quants[name], node.inputs[1]
        op = TapeBuilder()  # records the new nodes; inserted before the scatter below
        batch = op.Shape(rows, start=0, end=1)
        fake = _fake_quant_rows(op, name, rows, quant, batch, head_dim)
        graph.insert_before(node, op.nodes)
        for init in op.initializers:
            graph.register_initializer(init)
        node.replace_input_with(1, fake)
    ir_model.opset_imports[""] = max(ir_model.opset_imports[""], 24)
    return stamp(ir.serde.serialize_model(ir_model))


def _expose_cache_rows(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model with each TensorScatter's update rows as extra outputs (for calibration)."""
    ir_model = ir.serde.deserialize_model(model)
    names = []
    for node in [n for n in ir_model.graph if n.op_type == "TensorScatter"]:
        rows = node.inputs[1]
        ir_model.graph.outputs.append(rows)
        names.append((node.outputs[0].name.removeprefix("present_"), rows.name))
    return ir.serde.serialize_model(ir_model), names


class Decoder:
    """A built decoder on ORT with its own greedy loop over a linear cache."""

    def __init__(self, model: onnx.ModelProto, spec) -> None:
        self.spec, self.session = spec, session(model, threads=1)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def empty_caches(self, length: int) -> dict[str, np.ndarray]:
        shape = (1, self.spec.num_kv_heads, length, self.spec.head_dim)
        return {
            f"past_{k}_{i}": np.zeros(shape, np.float32) for i in range(self.spec.num_layers) for k in ("key", "value")
        }

    def run(self, ids: list[int], caches: dict, start: int) -> tuple[np.ndarray, dict]:
        feeds = {"input_ids": np.array([ids], np.int64), "write_indices": np.array([start], np.int64), **caches}
        out = dict(zip(self.outputs, self.session.run(None, feeds), strict=True))
        presents = {k.replace("present_", "past_"): v for k, v in out.items() if k.startswith("present_")}
        return out["logits"][0], presents

    def greedy(self, prompt: list[int], steps: int) -> list[int]:
        caches = self.empty_caches(len(prompt) + steps)
        logits, caches = self.run(prompt, caches, 0)
        tokens = [int(logits[-1].argmax())]
        for t in range(steps - 1):
            logits, caches = self.run(tokens[-1:], caches, len(prompt) + t)
            tokens.append(int(logits[-1].argmax()))
        return tokens

    def next_token_logits(self, sequence: list[int]) -> np.ndarray:
        """Teacher-forced logits at every position (one prefill; rows are quantized as written)."""
        return self.run(sequence, self.empty_caches(len(sequence)), 0)[0]


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def decoder_study(arch: str) -> list[dict]:
    from proposals.text_pipeline.build import build_decoder, spec_from_model
    from proposals.text_pipeline.families import tiny_model

    base = build_decoder(tiny_model(arch, head_dim=HEAD_DIM))
    spec = spec_from_model(base)
    fp32 = Decoder(base, spec)
    reference_tokens = fp32.greedy(PROMPT, NEW_TOKENS)
    sequence = PROMPT + reference_tokens
    positions = slice(len(PROMPT) - 1, len(sequence) - 1)  # logits predicting the 64 new tokens
    fp32_logits = fp32.next_token_logits(sequence)[positions]
    exposed, names = _expose_cache_rows(base)
    calib = Decoder(exposed, spec)
    feeds = {
        "input_ids": np.array([PROMPT], np.int64),
        "write_indices": np.array([0], np.int64),
        **calib.empty_caches(len(PROMPT)),
    }
    sample = dict(zip(calib.outputs, calib.session.run(None, feeds), strict=True))
    rows = []
    for label, dtype, k_gran, v_gran in configs():
        quants = {}
        for name, value_name in names:
            granularity = k_gran if name.startswith("key") else v_gran
            if granularity == "per_token_group" and spec.head_dim % reference.GROUP:
                break
            quants[name] = _quant(dtype, granularity, sample[value_name])
        else:
            quantized = Decoder(quantize_cache_writes(base, quants, spec.head_dim), spec)
            tokens = quantized.greedy(PROMPT, NEW_TOKENS)
            logits = quantized.next_token_logits(sequence)[positions]
            rows.append(
                {
                    "model": arch,
                    "config": label,
                    "token_agreement": _round(float(np.mean(np.array(tokens) == np.array(reference_tokens)))),
                    "kl": _round(_kl(fp32_logits, logits)),
                }
            )
            continue
        rows.append({"model": arch, "config": label, "skipped": f"head_dim {spec.head_dim} is not a multiple of 32"})
    return rows


def main() -> Path:
    """Rows of three studies (``study``: synthetic, int4_keys_only, decoder) in one result."""
    rows = [
        {"study": "synthetic", "config": label, "relative_error": _round(synthetic_error(d, k, v))}
        for label, d, k, v in configs()
    ]
    # The 4-bit key question on its own: keys quantized, values kept in float32.
    rows += [
        {"study": "int4_keys_only", "granularity": g, "relative_error": _round(synthetic_error("int4", g, None))}
        for g in reference.GRANULARITIES
    ]
    rows += [{"study": "decoder", **row} for row in decoder_study("llama") + decoder_study("qwen3")]
    return bench.write_json(TOPIC, "accuracy", rows, {"new_tokens": NEW_TOKENS})


# --8<-- [start:checkpoints]
# The real-checkpoint study: SmolLM2-135M-Instruct and Gemma 3 270M (dequantized GGUF weights).
CHECKPOINTS = ("smollm2-135m-instruct", "gemma3-270m")
CHECKPOINT_PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The three primary colours are",
    "A haiku about the sea:",
    "In Python, a list comprehension",
    "The first law of thermodynamics states that",
    "To bake bread you need",
    "The largest planet in the solar system is",
    "Photosynthesis is the process by which",
    "Once upon a time, in a small village,",
    "The main difference between a virus and a bacterium is",
    "A good night's sleep helps",
    "The Eiffel Tower was built",
    "Machine learning models learn from",
    "The recipe calls for two cups of",
    "In 1969, astronauts",
)
HELD_OUT_PAGE = "proposals/paged_attention/README.md"  # the project's own prose, never seen in training
HELD_OUT_TOKENS = 192
# --8<-- [end:checkpoints]


def held_out_text(page: str = HELD_OUT_PAGE) -> str:
    """The paragraphs of a project page (markdown-it-py), code and tables left out."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt().parse((Path(__file__).resolve().parents[2] / page).read_text())
    paragraphs = [
        t.content for i, t in enumerate(tokens) if t.type == "inline" and tokens[i - 1].type == "paragraph_open"
    ]
    return "\n\n".join(p for p in paragraphs if not p.startswith(("```", "<!--", "|")))


def _batch_greedy(
    model: onnx.ModelProto, prompts: list[list[int]], steps: int, weights: Path | None
) -> list[list[int]]:
    from proposals.text_pipeline.runners import OrtRunner

    runner = OrtRunner(model, external_data=weights)
    runner.start(len(prompts), max(map(len, prompts)) + steps)
    logits, tokens = runner.append(prompts), []
    for _ in range(steps):
        tokens.append(logits.argmax(-1).tolist())
        logits = runner.append([[t] for t in tokens[-1]])
    return [list(row) for row in zip(*tokens, strict=True)]


def _prefill_outputs(model: onnx.ModelProto, ids: list[int], weights: Path | None) -> dict[str, np.ndarray]:
    """Every output of one prefill of ``ids`` into empty caches (plain run: it copies on purpose)."""
    from proposals.text_pipeline.cache_formats import cache_buffers

    sess = session(model, log_severity=3, external_data=weights)
    feeds = {f"past_{b.name}": np.zeros(b.shape(1, len(ids)), b.numpy_dtype) for b in cache_buffers(model)}
    feeds |= {"input_ids": np.array([ids], np.int64), "write_indices": np.array([0], np.int64)}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logp = _log_softmax(logits[:-1])
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))


def key_channel_magnitudes(sample: dict[str, np.ndarray], names: list[tuple[str, str]]) -> np.ndarray:
    """Per layer (rows) and key channel (columns): max |k| over the tokens and kv heads."""
    keys = [sample[value] for name, value in names if name.startswith("key")]
    return np.stack([np.abs(k).max(axis=(0, 1, 2)) for k in keys])


# The configs that answer the KIVI question and the int8 choice: what a shorter run keeps.
KIVI_CONFIGS = (
    "int8 K per_token / V per_token",
    "int8 K per_token_group / V per_token_group",
    "int4 K per_token / V per_token",
    "int4 K per_channel / V per_token",
    "int4 K per_token_group / V per_token_group",
)


def checkpoint_study(
    name: str, *, quick: bool = False, only: tuple[str, ...] | None = None, prompts_used: int | None = None
) -> tuple[list[dict], np.ndarray]:
    """Every config on a packaged checkpoint: greedy agreement over ``NEW_TOKENS`` tokens on the
    16 prompts (batched, in place), KL(fp32 || quantized) and perplexity, teacher-forced over
    ``HELD_OUT_TOKENS`` tokens of the held-out page. Static scales come from the float32
    prefill of the prompts (not of the held-out text)."""
    from proposals.text_pipeline.build import spec_from_model
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder
    from proposals.text_pipeline.tokenizer import load_tokenizer

    folder = ModelFolder.read(exported_folder(name))
    base, spec = folder.decoder, spec_from_model(folder.decoder)
    tokenizer = load_tokenizer(folder.tokenizer_json)
    prompts = [tokenizer.encode(p).ids for p in CHECKPOINT_PROMPTS[: 2 if quick else prompts_used]]
    steps = 8 if quick else NEW_TOKENS
    text = tokenizer.encode(held_out_text()).ids[: 48 if quick else HELD_OUT_TOKENS]
    weights = folder.external_data  # model.onnx.data beside the export; rewrites keep the references
    reference_tokens = _batch_greedy(base, prompts, steps, weights)
    fp32_logits = _prefill_outputs(base, text, weights)["logits"][0]
    exposed, names = _expose_cache_rows(base)
    sample = _prefill_outputs(exposed, [t for p in prompts for t in p], weights)
    magnitudes = key_channel_magnitudes(sample, names)
    rows = [
        {
            "model": name,
            "config": "float32",
            "token_agreement": 1.0,
            "kl": 0.0,
            "perplexity": _round(_perplexity(fp32_logits, text)),
        }
    ]
    chosen = [c for c in configs() if only is None or c[0] in only]
    for label, dtype, k_gran, v_gran in chosen[:2] if quick else chosen:
        if "per_token_group" in (k_gran, v_gran) and spec.head_dim % reference.GROUP:
            rows.append(
                {"model": name, "config": label, "skipped": f"head_dim {spec.head_dim} is not a multiple of 32"}
            )
            continue
        quants = {n: _quant(dtype, k_gran if n.startswith("key") else v_gran, sample[v]) for n, v in names}
        quantized = quantize_cache_writes(base, quants, spec.head_dim)
        tokens = _batch_greedy(quantized, prompts, steps, weights)
        logits = _prefill_outputs(quantized, text, weights)["logits"][0]
        equal = [sum(a == b for a, b in zip(t, r, strict=True)) for t, r in zip(tokens, reference_tokens, strict=True)]
        rows.append(
            {
                "model": name,
                "config": label,
                "token_agreement": _round(sum(equal) / (steps * len(prompts))),
                "equal_tokens_per_prompt": equal,
                "kl": _round(_kl(fp32_logits[:-1], logits[:-1])),
                "perplexity": _round(_perplexity(logits, text)),
            }
        )
        print(rows[-1])
    return rows, magnitudes


def plot_key_channels(name: str, magnitudes: np.ndarray) -> Path:
    """Per-layer, per-channel key magnitude heat map: ``bench/key_channels_<model>.svg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    image = ax.imshow(magnitudes, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set(
        xlabel="key channel (head_dim index, max over kv heads)", ylabel="layer", title=f"{name}: max |key| per channel"
    )
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(__file__).resolve().parent / "bench" / f"key_channels_{name}.svg"
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


# Per checkpoint: (configs, prompts). Gemma 3's 262,144-token vocabulary makes each config
# several times dearer, so a shared 2-core machine runs its KIVI subset on 8 prompts.
CHECKPOINT_SCOPE = {"smollm2-135m-instruct": (None, None), "gemma3-270m": (KIVI_CONFIGS, 8)}


def checkpoints_main(quick: bool = False) -> None:
    """``bench/accuracy_checkpoints.json`` and the key-magnitude plots (``make bench``); the
    JSON is rewritten after each checkpoint, so a long run keeps what it finished."""
    rows, scope = [], {}
    for name, (only, prompts_used) in CHECKPOINT_SCOPE.items():
        study, magnitudes = checkpoint_study(name, quick=quick, only=only, prompts_used=prompts_used)
        median = np.median(magnitudes, axis=1)
        outliers = (magnitudes.max(axis=1) / median).round(2).tolist()
        rows += study
        rows.append({"model": name, "key_channel_outlier_ratio_per_layer": outliers})
        scope[name] = {
            "configs": "all" if only is None else list(only),
            "prompts": prompts_used or len(CHECKPOINT_PROMPTS),
        }
        if quick:
            continue
        plot_key_channels(name, magnitudes)
        setup = {
            "new_tokens": NEW_TOKENS,
            "prompts": list(CHECKPOINT_PROMPTS),
            "held_out": HELD_OUT_PAGE,
            "held_out_tokens": HELD_OUT_TOKENS,
            "scope": scope,
        }
        bench.write_json(TOPIC, "accuracy_checkpoints", rows, setup)


if __name__ == "__main__":
    import sys

    if "--checkpoints" in sys.argv:
        checkpoints_main(quick="--quick" in sys.argv)
    else:
        print(main())
