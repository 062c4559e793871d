"""A real byte-level BPE tokenizer, trained offline and deterministically on text this
project ships (``corpus/``, a copy of the project's KV-cache background notes).

The corpus is read in a fixed order and the trainer breaks ties between equally frequent
pairs by the pair's ids, so two trainings give the same ``tokenizer.json`` bytes whatever
rayon's thread count (checked by the tests); nothing here touches the environment.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
VOCAB_SIZE = 512
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # ids 0 and 1
# GPT-2's convention: one <|endoftext|> token both begins and ends a text, so there is no
# separate BOS token (transformers' configs of these models say bos_token_id=None).
BOS_TOKEN = EOS_TOKEN


def corpus_lines() -> list[str]:
    """Every line of every corpus file, files in sorted order."""
    lines: list[str] = []
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        lines.extend(path.read_text(encoding="utf-8").splitlines())
    return lines


def train_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE from scratch on the shipped corpus."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer, length=None)
    return tokenizer


@cache
def tokenizer_json() -> bytes:
    """The trained tokenizer serialized as ``tokenizer.json`` bytes (cached per process)."""
    return train_tokenizer().to_str(pretty=True).encode("utf-8")


def load_tokenizer(data: bytes | None = None) -> Tokenizer:
    """A tokenizer from ``tokenizer.json`` bytes (the freshly trained one by default)."""
    return Tokenizer.from_str((tokenizer_json() if data is None else data).decode("utf-8"))
