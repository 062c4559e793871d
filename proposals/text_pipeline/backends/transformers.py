"""The transformers backend, the reference, run by ``runners.TorchRunner`` under the same
``Generator`` as every other runner, on the folder's own weights:

- an exported folder (``pipeline.json`` has a ``source``): the checkpoint it records,
  found again and checked against its sha256, loaded in float32;
- a zoo folder: the seeded recipe ``pipeline.json`` names, rebuilt, and used only after
  ``build_decoder`` of it gives exactly ``model.onnx``'s initializers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import numpy_helper

from generator.errors import UsageError
from proposals.text_pipeline.build import build_decoder, decoder_spec, spec_from_model
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
    model = folder_model(folder)
    return Pipeline(RunnerEngine(TorchRunner(model)), load_tokenizer(folder.tokenizer_json), folder.config)


# --8<-- [start:folder_model]
def folder_model(folder: ModelFolder):
    """The transformers module whose weights are the folder's (see the module docstring)."""
    if "source" in folder.manifest:
        from proposals.text_pipeline.export import Source, load_checkpoint, source_checkpoint

        where = str(folder.path / PIPELINE_FILE)
        source = Source.from_json(folder.manifest["source"], where)
        model, _ = load_checkpoint(source_checkpoint(source, where), source)
    else:
        model = tiny_model(recipe_architecture(folder))
        check_recipe_weights(folder, model)
    if decoder_spec(model.config) != spec_from_model(folder.decoder):
        raise UsageError(
            f"{folder.path}: the transformers model {PIPELINE_FILE} names does not describe model.onnx "
            "(shapes differ); rebuild the folder"
        )
    return model


# --8<-- [end:folder_model]


def check_recipe_weights(folder: ModelFolder, model) -> None:
    """The recipe's weights, as ``build_decoder`` stores them, equal ``model.onnx``'s
    initializers: same names, same values bit for bit."""
    ours = {t.name: t for t in folder.decoder.graph.initializer}
    rebuilt = {t.name: t for t in build_decoder(model).graph.initializer}
    if set(ours) != set(rebuilt):
        differ = sorted(set(ours) ^ set(rebuilt))[0]
        raise UsageError(
            f"{folder.path}: model.onnx's initializers are not the recipe's ({differ!r} is in one only); "
            "the transformers backend runs only the weights the folder holds"
        )
    for name, tensor in rebuilt.items():
        if not np.array_equal(numpy_helper.to_array(ours[name]), numpy_helper.to_array(tensor)):
            raise UsageError(
                f"{folder.path}: model.onnx's {name!r} differs from the transformers recipe's in {PIPELINE_FILE}; "
                "the transformers backend runs only the weights the folder holds"
            )


def recipe_architecture(folder: ModelFolder) -> str:
    """The architecture of the transformers recipe recorded in ``pipeline.json``."""
    recipe = folder.manifest.get("transformers")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("architecture"), str):
        raise UsageError(
            f"{folder.path / PIPELINE_FILE}: no transformers.architecture or source; the transformers backend "
            "needs the recipe the zoo writes or the checkpoint an export records (use onnxruntime for other folders)"
        )
    return recipe["architecture"]


def devices() -> list[Device]:
    return [Device("CPU", {"torch_device": "cpu"})]


register_backend(NAME, create, devices)
