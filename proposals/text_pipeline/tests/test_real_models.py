"""The packaged checkpoints (SmolLM2-135M-Instruct, Gemma 3 270M) end to end: exported
folders, token-identical to the committed float64 transformers reference on every backend
that runs them, and the exporter's refusals of bad input (one line, exit 2, nothing
written outside --out)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest

from generator.errors import UsageError
from proposals.text_pipeline import __main__ as cli
from proposals.text_pipeline import checkpoints, export
from proposals.text_pipeline.chat import chat_prompt
from proposals.text_pipeline.config import GenerationConfig, GenerationInput
from proposals.text_pipeline.factory import Device, create_pipeline
from proposals.text_pipeline.folder import ModelFolder
from proposals.text_pipeline.real_models import PAGED_BLOCKS, generate_tokens, load_reference, prompts
from proposals.text_pipeline.tests.conftest import FRESH_EXPORT, LIVE_TRANSFORMERS
from proposals.text_pipeline.tokenizer import load_tokenizer

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"


@cache
def reference(name: str) -> dict:
    """The committed float64 transformers reference of one model (real_reference.json)."""
    return load_reference()["models"][name]


SHORT = 16  # tokens checked on the backends other than onnxruntime (each loads its own copy)


@pytest.fixture(scope="module")
def ort(real_folder):
    """One onnxruntime pipeline per model, shared by the module's tests."""
    pipelines = {}

    def get(name: str):
        if name not in pipelines:
            pipelines[name] = create_pipeline("onnxruntime", real_folder(name))
        return pipelines[name]

    return get


def test_export_records_the_checkpoint(real_folder):
    """pipeline.json names the source file, its sha256 and architecture; the weights lie in
    an external data file inside the folder; the checkpoint's tokenizer and template are there."""
    for name, arch in ((SMOL, "llama"), (GEMMA, "gemma3_text")):
        folder = real_folder(name)
        manifest = json.loads((folder / "pipeline.json").read_text())
        ckpt = checkpoints.checkpoint(name)
        assert manifest["source"] == {
            "kind": "gguf",
            "file": ckpt.file_name,
            "sha256": ckpt.sha256,
            "architecture": arch,
            "model": name,
        }
        read = ModelFolder.read(folder)
        assert read.external_data == folder and (folder / "model.onnx.data").stat().st_size > 5e8
        assert ("chat_template" in manifest) == ckpt.chat
    assert json.loads((real_folder(SMOL) / "pipeline.json").read_text())["special_tokens"]["eos_token_id"] == 2


@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_prompts_encode_to_the_reference_ids(real_folder, name):
    """The exported tokenizer (and SmolLM2's chat template) give the ids the reference used."""
    tokenizer = load_tokenizer(ModelFolder.read(real_folder(name)).tokenizer_json)
    texts = prompts(name, real_folder(name))
    assert [tokenizer.encode(t).ids for t in texts] == [p["prompt_ids"] for p in reference(name)["prompts"]]
    if name == GEMMA:
        assert len(reference(name)["prompts"][-1]["prompt_ids"]) > 512  # past the sliding window


@pytest.mark.parametrize(("name", "index"), [(SMOL, i) for i in range(4)] + [(GEMMA, i) for i in range(4)])
def test_onnxruntime_is_token_identical_to_transformers(ort, name, index):
    """64 greedy tokens, each equal to the float64 transformers reference (Gemma's last
    prompt is past the 512-token window, so its sliding layers' rings wrap)."""
    prompt = reference(name)["prompts"][index]
    assert generate_tokens(ort(name), prompt["prompt_ids"], len(prompt["tokens"])) == prompt["tokens"]


def test_paged_backend_runs_the_exported_folder(real_folder):
    prompt = reference(SMOL)["prompts"][0]
    pipeline = create_pipeline("onnxruntime-paged", real_folder(SMOL), Device("CPU", {"num_blocks": PAGED_BLOCKS}))
    assert generate_tokens(pipeline, prompt["prompt_ids"], SHORT) == prompt["tokens"][:SHORT]


def test_onnxruntime_genai_runs_the_exported_folder(real_folder):
    """ORT GenAI stops at the checkpoint's EOS (its own, from genai_config.json): the answer's
    tokens, EOS included, are the reference's."""
    prompt = reference(SMOL)["prompts"][0]
    pipeline = create_pipeline("onnxruntime-genai", real_folder(SMOL))
    eos = pipeline.get_generation_config().eos_token_ids
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=SHORT, eos_token_ids=eos))
    tokens = pipeline.generate([GenerationInput(prompt["prompt"])])[0].token_ids
    end = next(i for i, t in enumerate(prompt["tokens"]) if t in eos)  # "The capital of France is Paris."
    assert list(tokens) == prompt["tokens"][: end + 1]


@pytest.mark.skipif(not os.environ.get(LIVE_TRANSFORMERS), reason=f"CI only ({LIVE_TRANSFORMERS}=1): loads the GGUFs")
@pytest.mark.parametrize(("name", "indices", "new_tokens"), [(SMOL, range(4), 64), (GEMMA, [3], SHORT)])
def test_transformers_backend_loads_the_recorded_checkpoint(real_folder, name, indices, new_tokens):
    """The transformers backend runs the GGUF that pipeline.json names (sha256 checked),
    live, in float32: the committed float64 reference's tokens."""
    pipeline = create_pipeline("transformers", real_folder(name))
    for i in indices:
        prompt = reference(name)["prompts"][i]
        assert generate_tokens(pipeline, prompt["prompt_ids"], new_tokens) == prompt["tokens"][:new_tokens]


def test_openvino_genai_reads_the_gguf_and_names_what_stops_gemma(real_folder):
    """SmolLM2's GGUF is read natively (its tokens agree up to the divergence the committed
    agreement table records); Gemma 3's is refused with both reasons."""
    from generator.bench import load_results
    from proposals.text_pipeline.real_models import AGREEMENT

    rows = load_results("text_pipeline", AGREEMENT)["rows"]
    row = next(r for r in rows if r["model"] == SMOL and r["backend"] == "openvino-genai" and r["prompt"] == 0)
    prompt = reference(SMOL)["prompts"][0]
    tokens = generate_tokens(create_pipeline("openvino-genai", real_folder(SMOL)), prompt["prompt_ids"], SHORT)
    agree = row["first_divergence"] if row["first_divergence"] is not None else SHORT
    assert tokens[: min(agree, SHORT)] == prompt["tokens"][: min(agree, SHORT)]
    with pytest.raises(UsageError, match="reads GGUF for llama, qwen2, qwen3 only.*sliding window"):
        create_pipeline("openvino-genai", real_folder(GEMMA))


def test_paged_backend_names_what_stops_gemma(real_folder):
    with pytest.raises(UsageError, match="the paged backend needs a linear cache"):
        create_pipeline("onnxruntime-paged", real_folder(GEMMA))


def _linked_copy(folder: Path, target: Path) -> Path:
    """A copy of an export whose large file is a hard link (nothing is rewritten in it)."""
    target.mkdir()
    for path in folder.iterdir():
        os.link(path, target / path.name)
    (target / "pipeline.json").unlink()
    shutil.copyfile(folder / "pipeline.json", target / "pipeline.json")
    return target


def test_transformers_backend_refuses_a_sha256_mismatch(real_folder, tmp_path):
    folder = _linked_copy(real_folder(SMOL), tmp_path / "copy")
    manifest = json.loads((folder / "pipeline.json").read_text())
    manifest["source"]["sha256"] = "0" * 64
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="does not match the 0{64} that .* records; these are not the folder's"):
        create_pipeline("transformers", folder)


def test_chat_streams_the_answer(ort, real_folder):
    """SmolLM2's chat template applied to a question, the answer streamed in pieces."""
    prompt = GenerationInput(chat_prompt(real_folder(SMOL), "What is the capital of France?"))
    pipeline = ort(SMOL)
    eos = ModelFolder.read(real_folder(SMOL)).config.eos_token_ids
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=12, eos_token_ids=eos))
    pieces = list(pipeline.stream(prompt))
    assert "".join(pieces) == "The capital of France is Paris." and len(pieces) > 1


# --- bad input: one line, exit 2, nothing written outside --out -------------------------


def _gguf(path: Path, arch: str) -> Path:
    """A GGUF file with a header only, of architecture ``arch``."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _truncated(tmp: Path) -> Path:
    source = checkpoints.checkpoint_file(SMOL)
    with source.open("rb") as f:
        (tmp / "cut.gguf").write_bytes(f.read(4 << 20))
    return tmp / "cut.gguf"


BAD_EXPORTS = {
    "truncated": (lambda t: ["--gguf", str(_truncated(t))], "truncated"),
    "not_gguf": (
        lambda t: ["--gguf", str(t / "x.gguf")] if (t / "x.gguf").write_text("hello") else [],
        "not a GGUF file",
    ),
    "unsupported_architecture": (
        lambda t: ["--gguf", str(_gguf(t / "gpt2.gguf", "gpt2"))],
        "unsupported architecture 'gpt2'; supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3",
    ),
    "vision_gguf": (
        lambda t: ["--gguf", str(_gguf(t / "mmproj.gguf", "clip"))],
        "a vision checkpoint (GGUF architecture 'clip'); supported: text decoders",
    ),
    "no_config_json": (lambda t: ["--hf", str(t)], "no config.json; --hf takes a transformers checkpoint folder"),
    "vision_hf": (
        lambda t: (
            ["--hf", str(t)]
            if (t / "config.json").write_text(json.dumps({"model_type": "gemma3", "vision_config": {}}))
            else []
        ),
        "a vision checkpoint ('gemma3' has a vision tower)",
    ),
    "unsupported_hf": (
        lambda t: ["--hf", str(t)] if (t / "config.json").write_text(json.dumps({"model_type": "gpt2"})) else [],
        "unsupported architecture 'gpt2'; supported: llama,",
    ),
}


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_bad_checkpoint_exits_2_with_one_line(tmp_path, capsys, case):
    make, message = BAD_EXPORTS[case]
    source = tmp_path / "source"
    source.mkdir()
    args = make(source)
    before = _tree(tmp_path)
    assert cli.main(["export", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_out_that_holds_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["export", "--gguf", str(checkpoints.checkpoint_file(SMOL)), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a non-empty folder that holds no export" in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == {"notes.txt": b"mine"}


def test_sha256_mismatch_of_a_packaged_checkpoint(monkeypatch, capsys):
    wrong = replace(checkpoints.CHECKPOINTS[SMOL], sha256="1" * 64)
    monkeypatch.setitem(checkpoints.CHECKPOINTS, SMOL, wrong)
    assert cli.main(["hello", "--model", SMOL]) == 2
    err = capsys.readouterr().err
    assert f"does not match {SMOL}'s {'1' * 64}" in err and len(err.strip().splitlines()) == 1


def test_unknown_model_names_the_valid_ones(capsys):
    assert cli.main(["hello", "--model", "gpt-5"]) == 2
    assert f"unknown model 'gpt-5'; valid: {SMOL}, {GEMMA}" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get(FRESH_EXPORT), reason=f"CI only ({FRESH_EXPORT}=1): a second export")
def test_export_is_deterministic(real_folder):
    """The session's fresh export has the same bytes as the cached one in build/exports."""
    cached = export.exported_folder(SMOL)
    assert _tree(real_folder(SMOL)) == _tree(cached)


def test_export_of_a_transformers_folder(tmp_path, capsys):
    """`export --hf` of a saved transformers model: onnxruntime on the export gives the zoo
    folder's tokens (the same weights), and the transformers backend loads the folder it records."""
    from transformers import PreTrainedTokenizerFast

    from proposals.text_pipeline.families import tiny_model
    from proposals.text_pipeline.folder import write_folder
    from proposals.text_pipeline.tokenizer import EOS_TOKEN, PAD_TOKEN

    source = tmp_path / "hf"
    tiny_model("llama").save_pretrained(source)
    PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(), eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    ).save_pretrained(source)
    assert cli.main(["export", "--hf", str(source), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    ids = load_tokenizer().encode("The KV cache").ids
    zoo = generate_tokens(create_pipeline("onnxruntime", write_folder("llama", tmp_path / "zoo")), ids, SHORT)
    assert generate_tokens(create_pipeline("onnxruntime", tmp_path / "out"), ids, SHORT) == zoo
    assert generate_tokens(create_pipeline("transformers", tmp_path / "out"), ids, SHORT) == zoo


def test_transformers_backend_refuses_a_zoo_folder_with_other_weights(tmp_path):
    """The seeded recipe is rebuilt only when its weights equal model.onnx's initializers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from proposals.text_pipeline.folder import write_folder

    folder = write_folder("llama", tmp_path / "llama")
    create_pipeline("transformers", folder)  # the untouched folder is accepted
    model = onnx.load(folder / "model.onnx")
    tensor = next(t for t in model.graph.initializer if t.name.endswith("down_proj.weight"))
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))  # one ulp in one weight
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, folder / "model.onnx")
    with pytest.raises(UsageError, match=f"model.onnx's '{tensor.name}' differs from the transformers recipe"):
        create_pipeline("transformers", folder)
