"""Token shards: `prepare` a data folder from a corpus, and load it back.

A data folder holds `tokenizer.json`, `train.bin`, `valid.bin` (raw `np.memmap` arrays of shape
[n_chunks, seq_len], uint16 when the vocabulary has fewer than 65536 ids, else uint32) and
`manifest.json`, written last: a folder with a manifest is complete.

Each document is tokenized on its own and cut into `seq_len`-token chunks; a shorter last chunk is
dropped (the paper's recipe), so no chunk crosses two documents. The chunks hold file tokens only:
the end-of-file token is in the vocabulary (for generation and padding) but is not inserted.
Re-running `prepare` with the same arguments (and the same tokenizer.json bytes) reuses the folder;
other arguments are an error unless `overwrite`. The corpus itself is not fingerprinted: after
editing the files of a `dir:` source, prepare again with `overwrite`.
Batches (random training chunks, ordered validation) live in `pi_lnfree.batches`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pi_lnfree import bpe
from pi_lnfree.corpus import SPLIT_RULE, ReadStats, iter_documents, open_source
from pi_lnfree.errors import UserError
from pi_lnfree.files import AtomicFile, write_json
from pi_lnfree.progress import console, progress

__all__ = [
    "DataFolder",
    "describe",
    "load_data_folder",
    "prepare",
]

FORMAT = "pi-lnfree-data/1"
OUTPUT_FILES = ("manifest.json", "tokenizer.json", "train.bin", "valid.bin")
SPLITS = ("train", "valid")
# Documents are sent to the tokenizer's parallel encode_batch in groups this large (bytes of text):
# big enough to keep every core busy, small enough to bound memory on any corpus.
ENCODE_BATCH_BYTES = 4 << 20


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab < 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size < (1 << 16) else np.uint32)


@dataclass
class DataFolder:
    """A prepared data folder: read-only memmaps of the train/valid chunks plus the manifest."""

    path: Path
    manifest: dict
    vocab_size: int
    seq_len: int
    train: np.ndarray  # [n_train_chunks, seq_len], read-only memmap
    valid: np.ndarray  # [n_valid_chunks, seq_len], read-only memmap
    tokenizer_sha256: str

    def tokenizer(self):
        """The folder's `tokenizers.Tokenizer`."""
        data = (self.path / "tokenizer.json").read_bytes()
        return bpe.tokenizer_from_bytes(data, str(self.path / "tokenizer.json"))


def _open_chunks(path: Path, n_chunks: int, seq_len: int, dtype: np.dtype) -> np.ndarray:
    expected = n_chunks * seq_len * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        size = path.stat().st_size if path.is_file() else "missing"
        raise UserError(f"{path} is incomplete (expected {expected} bytes, found {size}); "
                        "prepare the folder again with --overwrite")
    if n_chunks == 0:  # np.memmap cannot map an empty file
        empty = np.zeros((0, seq_len), dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_chunks, seq_len))


def load_data_folder(path: str | Path) -> DataFolder:
    """Open a prepared data folder; UserError when it is missing, incomplete or inconsistent."""
    path = Path(path).expanduser()
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        what = "does not exist" if not path.exists() else "has no manifest.json"
        raise UserError(f"data folder {path} {what}; create it with `pi-lnfree data prepare`")
    try:
        manifest = json.loads(manifest_path.read_text())
        seq_len, vocab_size = int(manifest["seq_len"]), int(manifest["vocab_size"])
        chunks, sha = manifest["chunks"], manifest["tokenizer_sha256"]
        dtype = np.dtype(manifest["dtype"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest_path} is not a pi-lnfree data manifest ({e})") from e
    tok_path = path / "tokenizer.json"
    if not tok_path.is_file() or bpe.sha256_bytes(tok_path.read_bytes()) != sha:
        raise UserError(f"{tok_path} is missing or is not the tokenizer the shards were made with")
    train = _open_chunks(path / "train.bin", int(chunks["train"]), seq_len, dtype)
    valid = _open_chunks(path / "valid.bin", int(chunks["valid"]), seq_len, dtype)
    return DataFolder(path, manifest, vocab_size, seq_len, train, valid, sha)


# ---------------------------------------------------------------------------------------------
# prepare


def _check_arguments(vocab_size, seq_len, valid_fraction, tokenizer, limit_mb) -> None:
    if (vocab_size is None) == (tokenizer is None):
        raise UserError("give exactly one of --vocab-size N (train a tokenizer) or --tokenizer PATH")
    if vocab_size is not None:
        bpe.check_vocab_size(vocab_size)
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2 (an input and a target token), got {seq_len}")
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    if limit_mb is not None and limit_mb <= 0:
        raise UserError(f"--limit-mb must be positive, got {limit_mb}")


def _reuse_or_clear(out: Path, request: dict, overwrite: bool) -> dict | None:
    """The existing manifest when `out` already holds this request; else make `out` ready to write."""
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not overwrite:
        try:
            manifest = json.loads(manifest_path.read_text())
            old, had = manifest.get("request", {}), manifest.get("tokenizer_sha256")
        except (ValueError, AttributeError):
            old, had = {}, None
        if old == request:
            return load_data_folder(out).manifest
        given = request["tokenizer_sha256"]
        if given and had != given:
            raise UserError(f"{out} holds shards made with another tokenizer (sha256 {str(had)[:12]}, "
                            f"given {given[:12]}); use --overwrite or another --out")
        diff = ", ".join(f"{k} {old.get(k)!r} != {v!r}" for k, v in request.items() if old.get(k) != v)
        raise UserError(f"{out} was prepared with other arguments ({diff}); use --overwrite or another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.name.endswith(".tmp"))
        if foreign:
            raise UserError(f"--out {out} is not empty and is not a data folder ({foreign[0]}, ...); "
                            "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # the manifest first: a half-cleared folder is never "complete"
        (out / name).unlink(missing_ok=True)
    return None


class _ShardWriter:
    """Appends whole seq_len chunks of each document to a temporary file that becomes `path` in
    `finish()`, counting as it goes."""

    def __init__(self, path: Path, seq_len: int, dtype: np.dtype):
        self.path, self.seq_len, self.dtype = path, seq_len, dtype
        self.out = AtomicFile(path, "wb")  # committed in finish()
        self.file = self.out.file
        self.documents = self.text_bytes = self.tokens = self.chunks = 0

    def add(self, ids_list: list[list[int]], text_bytes: int) -> None:
        pieces = []
        for ids in ids_list:
            n = len(ids) // self.seq_len
            self.tokens += len(ids)
            if n:
                pieces.append(np.asarray(ids[: n * self.seq_len], dtype=self.dtype))
                self.chunks += n
        self.documents += len(ids_list)
        self.text_bytes += text_bytes
        if pieces:
            self.file.write(np.concatenate(pieces).tobytes())

    def finish(self) -> dict:
        self.out.commit()
        return {"files": self.documents, "text_bytes": self.text_bytes,
                "tokens": self.tokens, "chunks": self.chunks}


def _encode(tok, texts: list[str]) -> list[list[int]]:
    """Parallel batch encoding without special tokens (offsets skipped when the library allows)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _tokenize_splits(source, tok, out: Path, seq_len: int, valid_fraction: float,
                     limit_bytes: int | None, stats: ReadStats) -> dict[str, dict]:
    """Stream every document through encode_batch into train.bin / valid.bin."""
    dtype = dtype_for_vocab(tok.get_vocab_size())
    writers = {s: _ShardWriter(out / f"{s}.bin", seq_len, dtype) for s in SPLITS}
    pending: dict[str, list[str]] = {s: [] for s in SPLITS}
    pending_bytes = {s: 0 for s in SPLITS}

    def flush(split: str) -> None:
        if pending[split]:
            writers[split].add(_encode(tok, pending[split]), pending_bytes[split])
            pending[split], pending_bytes[split] = [], 0

    total = None if limit_bytes is not None else source.n_files
    try:
        with progress(transient=True) as bar:
            task = bar.add_task("tokenizing", total=total)
            for split, text in iter_documents(source, valid_fraction, stats, limit_bytes):
                pending[split].append(text)
                pending_bytes[split] += len(text.encode("utf-8"))
                if pending_bytes[split] >= ENCODE_BATCH_BYTES:
                    flush(split)
                bar.update(task, completed=stats.records)
            for split in SPLITS:
                flush(split)
    except BaseException:
        for writer in writers.values():
            writer.out.discard()
        raise
    return {s: writers[s].finish() for s in SPLITS}


def _train_tokenizer(source, vocab_size: int, valid_fraction: float, limit_bytes: int | None):
    stats = ReadStats()
    total = None if limit_bytes is not None else source.n_files
    with progress(transient=True) as bar:
        task = bar.add_task("training tokenizer", total=total)

        def texts():
            for _, text in iter_documents(source, valid_fraction, stats, limit_bytes, splits=("train",)):
                bar.update(task, completed=stats.records)
                yield text
            bar.update(task, description="learning BPE merges")

        tok = bpe.train_bpe(texts(), vocab_size)
        bar.update(task, description="tokenizer trained")
    if stats.documents == 0:
        raise UserError(f"source {source.spec!r} has no training documents (empty corpus"
                        + (f"; {_skipped(stats)} skipped)" if stats.skipped else ")"))
    return tok


def prepare(
    source: str,
    out: Path,
    vocab_size: int | None = None,
    seq_len: int = 128,
    valid_fraction: float = 0.01,
    tokenizer: Path | None = None,
    text_column: str = "content",
    glob: str = "*.py",
    limit_mb: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Tokenize a corpus into a data folder and return its manifest (reusing a matching folder).

    Trains a byte-level BPE of `vocab_size` on the train split, or uses the `tokenizer.json` at
    `tokenizer`. The returned manifest has `reused` set when an identical earlier run was found.
    """
    _check_arguments(vocab_size, seq_len, valid_fraction, tokenizer, limit_mb)
    out = Path(out).expanduser()
    tok_bytes = bpe.read_tokenizer_file(tokenizer) if tokenizer is not None else None
    request = {
        "source": source, "vocab_size": vocab_size,
        "tokenizer_sha256": bpe.sha256_bytes(tok_bytes) if tok_bytes is not None else None,
        "seq_len": seq_len, "valid_fraction": valid_fraction, "text_column": text_column,
        "glob": glob, "limit_mb": limit_mb,
    }
    existing = _reuse_or_clear(out, request, overwrite)
    if existing is not None:
        return {**existing, "reused": True}

    started = time.perf_counter()
    src = open_source(source, text_column=text_column, glob=glob)
    limit_bytes = int(limit_mb * 1e6) if limit_mb is not None else None
    if tok_bytes is not None:
        tok = bpe.tokenizer_from_bytes(tok_bytes, str(tokenizer))
    else:
        tok = _train_tokenizer(src, vocab_size, valid_fraction, limit_bytes)
        tok_bytes = tok.to_str().encode("utf-8")
    (out / "tokenizer.json").write_bytes(tok_bytes)

    stats = ReadStats()
    splits = _tokenize_splits(src, tok, out, seq_len, valid_fraction, limit_bytes, stats)
    if stats.documents == 0:
        raise UserError(f"source {source!r} is empty: no readable documents"
                        + (f" ({_skipped(stats)} skipped)" if stats.skipped else ""))
    if splits["train"]["chunks"] == 0:
        raise UserError(f"no training chunks: none of the {splits['train']['files']} training documents "
                        f"reaches {seq_len} tokens; lower --seq-len or use a larger corpus")
    vocab = tok.get_vocab_size()
    manifest = {
        "format": FORMAT,
        "source": source,
        "source_kind": src.kind,
        "request": request,
        "vocab_size": vocab,
        "seq_len": seq_len,
        "dtype": dtype_for_vocab(vocab).name,
        "tokenizer_sha256": bpe.sha256_bytes(tok_bytes),
        "tokenizer_trained": tokenizer is None,
        "eof_token": bpe.EOF_TOKEN if bpe.eof_id(tok) is not None else None,
        "eof_id": bpe.eof_id(tok),
        "files": {s: splits[s]["files"] for s in SPLITS},
        "skipped_files": dict(sorted(stats.skipped.items())),
        "text_bytes": {s: splits[s]["text_bytes"] for s in SPLITS},
        "tokens": {s: splits[s]["tokens"] for s in SPLITS},
        "chunks": {s: splits[s]["chunks"] for s in SPLITS},
        "split": {
            "rule": "the source's own validation split" if src.valid is not None else SPLIT_RULE,
            "valid_fraction": valid_fraction,
        },
        "limit_mb": limit_mb,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out / "manifest.json", manifest, indent=2)
    if stats.skipped:
        console.print(f"skipped {_skipped(stats)}", highlight=False)
    if manifest["chunks"]["valid"] == 0:
        console.print("[yellow]warning:[/yellow] the validation split is empty; raise --valid-fraction "
                      "or use a larger corpus before evaluating", highlight=False)
    return {**manifest, "reused": False}


def _skipped(stats: ReadStats) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items()))


def describe(manifest: dict[str, Any]) -> str:
    """One human line about a prepared folder."""
    f, t, c = manifest["files"], manifest["tokens"], manifest["chunks"]
    return (f"train {f['train']:,} files / {t['train']:,} tokens / {c['train']:,} chunks, "
            f"valid {f['valid']:,} / {t['valid']:,} / {c['valid']:,}; "
            f"seq_len {manifest['seq_len']}, vocab {manifest['vocab_size']:,}")
