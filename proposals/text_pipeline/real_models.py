"""The packaged checkpoints end to end: reference tokens and the backend agreement table.

``python -m proposals.text_pipeline.real_models reference`` computes the reference: each
named checkpoint loaded by transformers, cast to float64 and run greedily in
``float64_mode`` (portable: no float32 kernel decides a token), ``NEW_TOKENS`` tokens per
prompt, written to ``real_reference.json`` beside this module. The tests compare every backend with it.

``python -m proposals.text_pipeline.real_models agreement`` (part of ``make bench``) runs
every backend on each exported folder and writes ``bench/real_agreement.json``: per model ×
backend × prompt, how many of the greedy tokens equal the reference, the first divergence,
and the float32 top-2 logit gap there (onnxruntime's logits after the reference's prefix:
how close the two candidates were).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from generator.bench import machine
from generator.errors import UsageError
from proposals.text_pipeline.chat import chat_prompt
from proposals.text_pipeline.checkpoints import CHECKPOINTS, checkpoint
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.export import exported_folder
from proposals.text_pipeline.tokenizer import CORPUS_DIR

TOPIC = "text_pipeline"
NEW_TOKENS = 64
# Test data, not a bench result: the tokens every backend is compared with
REFERENCE = Path(__file__).with_name("real_reference.json")
AGREEMENT = "real_agreement"
REGENERATE = "python -m proposals.text_pipeline.real_models reference"

# --8<-- [start:prompts]
# SmolLM2 is a chat model: its messages go through its chat template. Gemma 3 270M is a
# base model: plain text, and one prompt longer than its 512-token sliding window.
MESSAGES = {
    "smollm2-135m-instruct": (
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain in one sentence what a key-value cache is.",
        "List three prime numbers.",
    ),
    "gemma3-270m": (
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village,",
        None,  # the long prompt: the start of the project's corpus, past the window
    ),
}
LONG_PROMPT_TOKENS = 560  # > Gemma 3's 512-token window, so the sliding layers' rings wrap
# --8<-- [end:prompts]
# Backends per model; a backend that cannot run a model is recorded with its reason.
BACKENDS = ("onnxruntime", "onnxruntime-paged", "onnxruntime-genai", "openvino-genai", "transformers")
PAGED_BLOCKS = 64  # 1,024 slots of 16: room for one prompt and its 64 tokens


def long_prompt(tokenizer) -> str:
    """The corpus's first lines, as many as make at least ``LONG_PROMPT_TOKENS`` tokens."""
    lines: list[str] = []
    for line in (CORPUS_DIR / "kv_cache_and_attention.txt").read_text(encoding="utf-8").splitlines():
        lines.append(line)
        if len(tokenizer.encode("\n".join(lines)).ids) >= LONG_PROMPT_TOKENS:
            return "\n".join(lines)
    raise UsageError(f"the corpus has fewer than {LONG_PROMPT_TOKENS} tokens")


def prompts(name: str, folder: Path) -> list[str]:
    """The prompt texts of a named model, as its pipeline receives them."""
    from proposals.text_pipeline.folder import ModelFolder
    from proposals.text_pipeline.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ModelFolder.read(folder).tokenizer_json)
    texts = []
    for message in MESSAGES[name]:
        if message is None:
            texts.append(long_prompt(tokenizer))
        else:
            texts.append(chat_prompt(folder, message) if checkpoint(name).chat else message)
    return texts


def greedy_config(new_tokens: int = NEW_TOKENS) -> GenerationConfig:
    """Exactly ``new_tokens`` greedy tokens (no EOS stop), the same for every backend."""
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def generate_tokens(pipeline, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    """A backend's greedy tokens for one prompt of token ids."""
    pipeline.set_generation_config(greedy_config(new_tokens))
    gen = pipeline.generator([ids])
    while not gen.is_done():
        gen.generate_next_token()
    return list(gen.seqs[0].new_tokens)


# --8<-- [start:reference]
def reference_tokens(name: str) -> dict:
    """transformers in float64 on the exported folder's own checkpoint: each prompt's ids
    (the folder's tokenizer) and its ``NEW_TOKENS`` greedy tokens."""
    from generator.torch_reference import float64_mode
    from proposals.text_pipeline.backends.transformers import folder_model
    from proposals.text_pipeline.folder import ModelFolder
    from proposals.text_pipeline.generation import Generator
    from proposals.text_pipeline.runners import TorchRunner
    from proposals.text_pipeline.tokenizer import load_tokenizer

    folder = ModelFolder.read(exported_folder(name))
    tokenizer = load_tokenizer(folder.tokenizer_json)
    model = folder_model(folder).double().eval()  # in place: one copy of the weights
    rows = []
    for text in prompts(name, folder.path):
        ids = tokenizer.encode(text).ids
        with float64_mode():
            gen = Generator(TorchRunner(model), greedy_config(), batch_size=1)
            gen.append_input_tokens([ids])
            while not gen.is_done():
                gen.generate_next_token()
        tokens = list(gen.seqs[0].new_tokens)
        rows.append({"prompt": text, "prompt_ids": ids, "tokens": tokens, "text": answer(folder, tokens)})
        print(f"{name}: {len(ids)}-token prompt -> {tokenizer.decode(rows[-1]['tokens'])[:60]!r}", flush=True)
    return {"sha256": checkpoint(name).sha256, "new_tokens": NEW_TOKENS, "prompts": rows}


# --8<-- [end:reference]


def answer(folder, tokens: list[int]) -> str:
    """The text of ``tokens`` up to the first EOS (what a user of the pipeline would see)."""
    from proposals.text_pipeline.tokenizer import load_tokenizer

    eos = folder.config.eos_token_ids
    end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
    return load_tokenizer(folder.tokenizer_json).decode(tokens[:end], skip_special_tokens=True)


def load_reference() -> dict:
    return json.loads(REFERENCE.read_text())


def write_reference() -> Path:
    import torch
    import transformers

    data = {
        "command": REGENERATE,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float64",
        "models": {name: reference_tokens(name) for name in CHECKPOINTS},
    }
    REFERENCE.write_text(json.dumps(data, indent=1) + "\n")
    return REFERENCE


def top2_gap(runner, ids: list[int]) -> float:
    """float32 top-1 minus top-2 logit after ``ids`` (onnxruntime, the folder's decoder)."""
    runner.start(1, len(ids) + 1)
    logits = runner.append([ids])[0]
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def agreement_row(backend: str, pipeline, prompt: dict, runner, eos: frozenset[int] = frozenset()) -> dict:
    """One backend on one prompt against the reference tokens."""
    ref = prompt["tokens"]
    start = time.perf_counter()
    ours = generate_tokens(pipeline, prompt["prompt_ids"], len(ref))
    seconds = time.perf_counter() - start
    diverge = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), None)
    row = {
        "backend": backend,
        "prompt_tokens": len(prompt["prompt_ids"]),
        "equal": sum(a == b for a, b in zip(ours, ref, strict=True)),
        "new_tokens": len(ref),
        "first_divergence": diverge,
        "seconds": seconds,
    }
    if diverge is not None:
        row["top2_gap"] = top2_gap(runner, prompt["prompt_ids"] + ref[:diverge])
        row["tokens_there"] = {"backend": ours[diverge], "reference": ref[diverge]}
        # ORT GenAI and OpenVINO GenAI ban their built-in EOS ids until min_new_tokens, where
        # the shared Generator runs on past the EOS the reference produced
        row["at_reference_eos"] = ref[diverge] in eos
    return row


def agreement(name: str, reference: dict, backends=BACKENDS) -> list[dict]:
    """Every backend on every reference prompt of one model."""
    from proposals.text_pipeline.factory import Device, create_pipeline
    from proposals.text_pipeline.folder import ModelFolder
    from proposals.text_pipeline.runners import OrtRunner

    folder = exported_folder(name)
    model_folder = ModelFolder.read(folder)
    runner = OrtRunner(model_folder.decoder, external_data=model_folder.external_data)
    rows = []
    for backend in backends:
        device = Device("CPU", {"num_blocks": PAGED_BLOCKS}) if backend == "onnxruntime-paged" else None
        try:
            pipeline = create_pipeline(backend, folder, device)
        except UsageError as err:
            rows.append({"model": name, "backend": backend, "error": str(err)})
            print(f"{name} / {backend}: {err}", flush=True)
            continue
        for i, prompt in enumerate(reference["prompts"]):
            eos = model_folder.config.eos_token_ids
            row = {"model": name, "prompt": i, **agreement_row(backend, pipeline, prompt, runner, eos)}
            rows.append(row)
            print(f"{name} / {backend} / prompt {i}: {row['equal']}/{row['new_tokens']} equal", flush=True)
        del pipeline
    return rows


def write_agreement() -> Path:
    from generator.bench import write_json

    reference = load_reference()
    rows = [row for name in CHECKPOINTS for row in agreement(name, reference["models"][name])]
    setup = {"new_tokens": NEW_TOKENS, "reference": REFERENCE.name, "backends": list(BACKENDS)}
    return write_json(TOPIC, AGREEMENT, rows, setup)


def main(argv: list[str]) -> int:
    if argv[:1] == ["reference"]:
        print(write_reference())
    elif argv[:1] == ["agreement"]:
        print(write_agreement())
    else:
        print("usage: python -m proposals.text_pipeline.real_models (reference | agreement)", file=sys.stderr)
        return 2
    print(machine())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
