"""The BPE tokenizer is trained offline, deterministically, on text the project ships."""

from __future__ import annotations

from proposals.text_pipeline.tokenizer import (
    EOS_TOKEN,
    VOCAB_SIZE,
    corpus_lines,
    load_tokenizer,
    train_tokenizer,
)


def test_training_twice_gives_identical_bytes():
    assert train_tokenizer().to_str(pretty=True) == train_tokenizer().to_str(pretty=True)


def test_trained_on_the_shipped_corpus():
    tokenizer = load_tokenizer()
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.token_to_id(EOS_TOKEN) == 0
    assert len(corpus_lines()) > 100
    # merges learned from the corpus: its words take fewer tokens than arbitrary text
    assert len(tokenizer.encode("TensorScatter Attention cache").ids) < 12
    text = "Bottom-right causal masks: j <= i + offset, ü ✓"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
