"""``python -m proposals.text_pipeline "prompt" --backend onnxruntime --max-new-tokens 32 [--kv-cache int8]``

Streams the generated text as tokens are produced. The model folder defaults to the
zoo's (``zoo/text_pipeline/<arch>_decoder``); when the zoo is not written yet the same
files are built into a temporary folder. ``--model smollm2-135m-instruct`` (or
``gemma3-270m``) runs a packaged checkpoint, exported once into ``build/exports/``;
``--chat`` applies the folder's chat template to the prompt.

``python -m proposals.text_pipeline export (--gguf FILE | --hf FOLDER) --out DIR`` exports a
checkpoint into a pipeline model folder. Bad arguments: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from generator.cli import path_argument, stdout_closed, tolerant_output
from generator.errors import UsageError
from proposals.text_pipeline.cache_formats import cache_format, cache_format_names
from proposals.text_pipeline.chat import chat_prompt
from proposals.text_pipeline.checkpoints import checkpoint, checkpoint_names
from proposals.text_pipeline.config import GenerationInput, SamplingConfig
from proposals.text_pipeline.export import exported_folder
from proposals.text_pipeline.factory import Device, backend_names, create_pipeline, enumerate_devices
from proposals.text_pipeline.families import ALL_ARCHITECTURES
from proposals.text_pipeline.folder import write_folder, zoo_folder


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m proposals.text_pipeline", description=__doc__.splitlines()[0])
    p.add_argument("prompt")
    p.add_argument("--backend", default="onnxruntime", help=f"one of {', '.join(backend_names())}")
    p.add_argument("--arch", default="llama", help=f"zoo model: {', '.join(ALL_ARCHITECTURES)}")
    p.add_argument("--model-dir", type=path_argument, help="a pipeline model folder (overrides --arch)")
    p.add_argument("--model", help=f"a packaged checkpoint: {', '.join(checkpoint_names())} (overrides --arch)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    p.add_argument("--device", default=None, help="device identifier (default: the backend's first)")
    p.add_argument(
        "--kv-cache",
        default=None,
        metavar="FORMAT",
        help=f"KV-cache format, the device's kv_cache setting: {', '.join(cache_format_names())} (default: float32)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m proposals.text_pipeline export",
        description="export a checkpoint into a pipeline model folder",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", type=Path, help="a GGUF checkpoint file")
    source.add_argument("--hf", type=Path, help="a transformers checkpoint folder (config.json + weights)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (new, empty, or a previous export)")
    return p


def export_main(argv: list[str]) -> int:
    from proposals.text_pipeline.export import export_checkpoint

    try:
        args = _export_parser().parse_args(argv)
        out = export_checkpoint(gguf=args.gguf, hf=args.hf, out=args.out)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _model_dir(args, scratch: Path) -> Path:
    if args.model_dir is not None and args.model is not None:
        raise UsageError("give --model or --model-dir, not both")
    if args.model_dir is not None:
        return args.model_dir
    if args.model is not None:
        return exported_folder(args.model)
    if args.arch not in ALL_ARCHITECTURES:
        raise UsageError(f"unknown --arch {args.arch!r}; valid: {', '.join(ALL_ARCHITECTURES)}")
    return zoo_folder(args.arch) or write_folder(args.arch, scratch / args.arch)


def main(argv: list[str] | None = None) -> int:
    tolerant_output()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
        prompt = GenerationInput(args.prompt)  # a prompt that is not UTF-8 fails first
        if args.model is not None:
            checkpoint(args.model)  # an unknown name fails before anything is exported
        devices = enumerate_devices(args.backend)  # an unknown backend fails before any model is built
        device = args.device
        if args.kv_cache is not None:
            cache_format(args.kv_cache)  # an unknown format too
            device = Device(args.device or devices[0].identifier, {"kv_cache": args.kv_cache})
        with tempfile.TemporaryDirectory() as scratch:
            model_dir = _model_dir(args, Path(scratch))
            pipeline = create_pipeline(args.backend, model_dir, device)
            if args.chat:
                prompt = GenerationInput(chat_prompt(model_dir, prompt.text))
            base = pipeline.get_generation_config()
            pipeline.set_generation_config(
                base.with_(
                    max_new_tokens=args.max_new_tokens,
                    min_new_tokens=args.min_new_tokens,
                    stop_strings=frozenset(args.stop),
                    sampling_config=SamplingConfig(
                        do_sample=args.sample,
                        rng_seed=args.seed,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty,
                    ),
                )
            )
            for piece in pipeline.stream(prompt):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed("python -m proposals.text_pipeline")
    except KeyboardInterrupt:
        print("python -m proposals.text_pipeline: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
