"""The BPE tokenizer is trained offline, deterministically, on text the project ships."""

from __future__ import annotations

import os
import subprocess
import sys

from generator.bench import ROOT
from proposals.text_pipeline.tokenizer import (
    EOS_TOKEN,
    VOCAB_SIZE,
    corpus_lines,
    load_tokenizer,
    train_tokenizer,
)


def test_training_twice_gives_identical_bytes():
    assert train_tokenizer().to_str(pretty=True) == train_tokenizer().to_str(pretty=True)


def test_training_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    before = dict(os.environ)
    train_tokenizer()
    assert dict(os.environ) == before


def test_bytes_do_not_depend_on_rayon_threads():
    """rayon sizes its pool once per process, so the 8-thread training runs in a child."""
    code = "import sys; from proposals.text_pipeline.tokenizer import tokenizer_json as t; sys.stdout.buffer.write(t())"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAYON_NUM_THREADS": "8"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout
    assert child == train_tokenizer().to_str(pretty=True).encode("utf-8")


def test_trained_on_the_shipped_corpus():
    tokenizer = load_tokenizer()
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.token_to_id(EOS_TOKEN) == 0
    assert len(corpus_lines()) > 100
    # merges learned from the corpus: its words take fewer tokens than arbitrary text
    assert len(tokenizer.encode("TensorScatter Attention cache").ids) < 12
    text = "Bottom-right causal masks: j <= i + offset, ü ✓"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
