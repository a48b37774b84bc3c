"""Byte-level BPE tokenizers: train one on a corpus (deterministic), or load a `tokenizer.json`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from pi_lnfree.errors import UserError

EOF_TOKEN = "<|endoftext|>"
# 256 byte symbols + the end-of-file token: the smallest byte-level BPE vocabulary.
MIN_VOCAB_SIZE = 257


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string (the identity of a tokenizer.json)."""
    return hashlib.sha256(data).hexdigest()


def check_vocab_size(vocab_size: int) -> None:
    """UserError when `vocab_size` is below the smallest byte-level BPE vocabulary."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            "(256 bytes + the end-of-file token)"
        )


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a GPT-2 style byte-level BPE (no prefix space, `<|endoftext|>` special) on `texts`.

    The result is a function of the texts and `vocab_size` only: the same corpus gives the same
    `tokenizer.json` byte for byte. The vocabulary can end smaller than `vocab_size` when the
    corpus has fewer distinct merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOF_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_from_bytes(data: bytes, origin: str):
    """A `tokenizers.Tokenizer` from the bytes of a tokenizer.json, without truncation or padding."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # the Rust side raises plain Exception for malformed files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{origin} is not a valid tokenizer.json: {first}") from e
    tok.no_truncation()
    tok.no_padding()
    return tok


def read_tokenizer_file(path: Path | str) -> bytes:
    """The bytes of a tokenizer.json given by the user: a file, a folder holding one, or `hub:REPO`
    (the repository's tokenizer.json through `huggingface_hub`, e.g.
    `hub:huggingface-course/code-search-net-tokenizer`, the paper's 52K tokenizer)."""
    if str(path).startswith("hub:"):
        return _hub_tokenizer_bytes(str(path)[4:])
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read tokenizer {path}: {e.strerror or e}") from e


def _hub_tokenizer_bytes(repo_id: str) -> bytes:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "tokenizer.json")).read_bytes()
    except Exception as e:  # offline, unknown repository, no tokenizer.json: all are the user's input
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot fetch tokenizer.json of {repo_id!r} from the hub: {first}") from e


def eof_id(tok) -> int | None:
    """The id of the end-of-file token, or None when the tokenizer has none."""
    return tok.token_to_id(EOF_TOKEN)
