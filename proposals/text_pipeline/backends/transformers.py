"""The transformers backend, the reference: the tiny model rebuilt from the seeded recipe that
``pipeline.json`` names (checked against ``model.onnx``'s shapes), run by ``runners.TorchRunner``
under the same ``Generator`` as every other runner."""

from __future__ import annotations

from pathlib import Path

from generator.errors import UsageError
from proposals.text_pipeline.build import decoder_spec, spec_from_model
from proposals.text_pipeline.factory import Device, register_backend
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import PIPELINE_FILE, ModelFolder
from proposals.text_pipeline.generation import RunnerEngine
from proposals.text_pipeline.pipeline import Pipeline
from proposals.text_pipeline.runners import TorchRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

NAME = "transformers"


def create(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    model = tiny_model(recipe_architecture(folder))
    if decoder_spec(model.config) != spec_from_model(folder.decoder):
        raise UsageError(
            f"{model_dir}: the transformers recipe in {PIPELINE_FILE} does not "
            "describe model.onnx (shapes differ); rebuild the folder"
        )
    return Pipeline(RunnerEngine(TorchRunner(model)), load_tokenizer(folder.tokenizer_json), folder.config)


def recipe_architecture(folder: ModelFolder) -> str:
    """The architecture of the transformers recipe recorded in ``pipeline.json``."""
    recipe = folder.manifest.get("transformers")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("architecture"), str):
        raise UsageError(
            f"{folder.path / PIPELINE_FILE}: no transformers.architecture; the transformers backend "
            "needs the recipe the zoo writes (use onnxruntime for other folders)"
        )
    return recipe["architecture"]


def devices() -> list[Device]:
    return [Device("CPU", {"torch_device": "cpu"})]


register_backend(NAME, create, devices)
