"""Corpus sources: every source becomes a stream of documents through the `datasets` library.

Sources (the `--source` of `pi-lnfree data prepare`):

- `python-stdlib`: the `.py` files of the running interpreter's standard library
  (`sysconfig.get_paths()["stdlib"]`), without `site-packages` and `__pycache__`. The stdlib's own
  tests are kept: they are real Python code, as CodeParrot's GitHub files are.
- `dir:PATH`: every file matching `--glob` (default `*.py`) under PATH, recursively, sorted by
  relative path; hidden folders (a `.venv`, `.git`, ...) are skipped.
- `files:JSONL`: one JSON object per line with a text field (`--text-column`).
- `hub:DATASET[:CONFIG][,VALID_DATASET[:CONFIG]]`: anything `datasets.load_dataset` accepts, in
  streaming mode (a hub name or a local dataset folder). The dataset's own validation split is used
  when it has one; a second dataset after a comma supplies the validation split instead (the paper's
  `huggingface-course/codeparrot-ds-train,huggingface-course/codeparrot-ds-valid`).

Files are read as UTF-8; a file that cannot be read or decoded, or an empty one, is skipped and
counted. Local files are read in sorted relative-path order, so `--limit-mb` (reading stops once
that much text was read) always takes the same files.
Local files are wrapped with `IterableDataset.from_generator`, JSONL goes through
`load_dataset("json", streaming=True)`, so after loading every source takes the same path.
When a source has no validation split, each document goes to validation when
`sha1(utf-8 text)` read as a fraction of 2**160 is below `valid_fraction`: the same file always lands in
the same split, wherever it is stored, and identical files never straddle the split.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pi_lnfree.errors import UserError

VALID_SPLIT_NAMES = ("validation", "valid", "val", "dev")
SPLIT_RULE = "valid iff int(sha1(utf-8 text), 16) / 2**160 < valid_fraction"


@dataclass
class ReadStats:
    """Counts of what a pass over a source kept and skipped."""

    documents: int = 0
    text_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def records(self) -> int:
        """Records read so far, kept or skipped."""
        return self.documents + sum(self.skipped.values())


@dataclass
class Source:
    """An opened source: a train stream and, when the source has one, its own validation stream."""

    spec: str
    kind: str
    text_column: str
    train: Any  # datasets.IterableDataset
    valid: Any | None  # datasets.IterableDataset, or None: split train by hash
    n_files: int | None = None  # known for local file sources


def in_valid_split(text: str, valid_fraction: float) -> bool:
    """The deterministic split rule: a document is validation data iff its sha1 fraction < valid_fraction."""
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    return int(digest, 16) / float(1 << 160) < valid_fraction


def stdlib_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path, glob: str, exclude_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Files under `root` whose relative path matches `glob` (as `Path.match`: `*.py` matches at any
    depth), sorted by relative path; hidden folders and `exclude_dirs` are not descended into."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in exclude_dirs]
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in names:
            rel = rel_folder / name
            if rel.match(glob):
                found.append(rel)
    return [root / rel for rel in sorted(found, key=str)]


def _read_files(paths: list[str]) -> Iterator[dict[str, str | None]]:
    """Generator for `IterableDataset.from_generator`: one record per file, `error` set when unreadable."""
    for p in paths:
        try:
            text, error = Path(p).read_bytes().decode("utf-8"), None
        except UnicodeDecodeError:
            text, error = None, "not UTF-8"
        except OSError:
            text, error = None, "unreadable"
        yield {"path": p, "content": text, "error": error}


def _file_dataset(paths: list[Path]):
    from datasets import Features, IterableDataset, Value

    features = Features({"path": Value("string"), "content": Value("string"), "error": Value("string")})
    # gen_kwargs lists are shards for `datasets`: one shard per file, read in order.
    return IterableDataset.from_generator(
        _read_files, features=features, gen_kwargs={"paths": [str(p) for p in paths]}
    )


def _load_hub(spec: str):
    """`datasets.load_dataset(NAME[, CONFIG], streaming=True)` for a hub name or a local dataset folder."""
    import datasets

    name, config = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail and not Path(spec).exists():
        name, config = head, tail
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise UserError(f"hub source {name!r}: no such local dataset folder")
    if name.startswith("~"):
        name = str(Path(name).expanduser())
    try:
        loaded = datasets.load_dataset(name, config, streaming=True)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load dataset {spec!r}: {first}") from e
    return loaded


def _pick_splits(loaded, spec: str):
    """(train, validation or None) from an IterableDatasetDict."""
    names = list(loaded.keys())
    if "train" in names:
        train = loaded["train"]
    elif len(names) == 1:
        train = loaded[names[0]]
    else:
        raise UserError(f"dataset {spec!r} has no 'train' split (splits: {', '.join(names)})")
    valid = next((loaded[n] for n in VALID_SPLIT_NAMES if n in names), None)
    return train, valid


def open_source(spec: str, text_column: str = "content", glob: str = "*.py") -> Source:
    """Parse a `--source` string and open it as `datasets` streams (nothing is read yet)."""
    kind, _, arg = spec.partition(":")
    local_kinds = ("python-stdlib", "dir")
    if kind in local_kinds and text_column != "content":
        raise UserError(f"--text-column applies to hub: and files: sources, not {kind}")
    if spec == "python-stdlib":
        root = stdlib_root()
        paths = list_files(root, glob, exclude_dirs=("site-packages", "__pycache__"))
        if not paths:
            raise UserError(f"no files matching {glob!r} in the standard library folder {root}")
        return Source(spec, "python-stdlib", "content", _file_dataset(paths), None, len(paths))
    if kind == "dir" and arg:
        root = Path(arg).expanduser()
        if not root.is_dir():
            raise UserError(f"dir source: {root} is not a directory")
        paths = list_files(root, glob, exclude_dirs=("__pycache__",))
        if not paths:
            raise UserError(f"dir source: no files matching {glob!r} under {root}")
        return Source(spec, "dir", "content", _file_dataset(paths), None, len(paths))
    if kind == "files" and arg:
        path = Path(arg).expanduser()
        if not path.is_file():
            raise UserError(f"files source: {path} is not a file")
        import datasets

        train = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
        return Source(spec, "files", text_column, train, None)
    if kind == "hub" and arg:
        train_spec, _, valid_spec = arg.partition(",")
        train, valid = _pick_splits(_load_hub(train_spec), train_spec)
        if valid_spec:
            other_train, other_valid = _pick_splits(_load_hub(valid_spec), valid_spec)
            valid = other_valid if other_valid is not None else other_train
        return Source(spec, "hub", text_column, train, valid)
    raise UserError(
        f"unknown source {spec!r}: use python-stdlib, dir:PATH, files:JSONL or hub:DATASET[:CONFIG]"
    )


def iter_texts(stream, text_column: str, stats: ReadStats, limit_bytes: int | None = None) -> Iterator[str]:
    """The non-empty texts of a stream, counting skips in `stats`; stops once `limit_bytes` were read."""
    read = 0
    for record in stream:
        if limit_bytes is not None and read >= limit_bytes:
            return
        if record.get("error"):
            stats.skip(record["error"])
            continue
        if text_column not in record:
            columns = ", ".join(sorted(record))
            raise UserError(f"text column {text_column!r} not in the dataset (columns: {columns}); "
                            "use --text-column")
        text = record[text_column]
        if not isinstance(text, str) or not text:
            stats.skip("empty" if not text else "not text")
            continue
        n = len(text.encode("utf-8"))
        read += n
        stats.documents += 1
        stats.text_bytes += n
        yield text


def iter_documents(source: Source, valid_fraction: float, stats: ReadStats,
                   limit_bytes: int | None = None, splits: tuple[str, ...] = ("train", "valid"),
                   ) -> Iterator[tuple[str, str]]:
    """(split, text) pairs, split being "train" or "valid", in a deterministic order.

    Without a validation split of its own, a source is read once and the hash rule routes each
    document; `limit_bytes` then caps that one stream, so both splits come from the same capped
    corpus. With its own validation split, each wanted split's stream is read (and capped) in turn.
    """
    if source.valid is None:
        for text in iter_texts(source.train, source.text_column, stats, limit_bytes):
            split = "valid" if in_valid_split(text, valid_fraction) else "train"
            if split in splits:
                yield split, text
        return
    for split in splits:
        stream = source.train if split == "train" else source.valid
        for text in iter_texts(stream, source.text_column, stats, limit_bytes):
            yield split, text
