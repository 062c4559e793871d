"""Session fixtures of the text-pipeline tests: the packaged checkpoints' exported folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proposals.text_pipeline.export import exported_folder

# CI sets this: the folders are exported afresh into the session's temporary folder (and the
# export's determinism is checked against build/exports); locally the cached export is used.
FRESH_EXPORT = "TEXT_PIPELINE_FRESH_EXPORT"
# CI sets this too: the transformers backend loads the GGUF checkpoints live (tens of seconds
# each) and is checked against the committed reference tokens.
LIVE_TRANSFORMERS = "TEXT_PIPELINE_LIVE_TRANSFORMERS"


@pytest.fixture(scope="session")
def real_folder(tmp_path_factory):
    """``real_folder(name)``: the named checkpoint's pipeline folder, exported once per run
    (or once per checkpoint sha256 into build/exports/, reused by later runs)."""
    folders: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in folders:
            if os.environ.get(FRESH_EXPORT):
                from proposals.text_pipeline.checkpoints import checkpoint_file
                from proposals.text_pipeline.export import export_checkpoint

                out = tmp_path_factory.mktemp("exports") / name
                folders[name] = export_checkpoint(gguf=checkpoint_file(name), out=out)
            else:
                folders[name] = exported_folder(name)
        return folders[name]

    return get
