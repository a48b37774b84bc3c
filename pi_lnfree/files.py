"""JSON text and atomic file writes: the one place every writer of the package goes through.

An atomic write goes to a temporary file in the target's own folder (`.NAME.XXXX.tmp`, so it is
on the same file system), is flushed and fsynced, then renamed over the target with `os.replace`
and the folder entry fsynced. A reader therefore sees the old file or the new one, never half of
one; a crash mid-write leaves the old file and a stray `.NAME.*.tmp` (which `pi-lnfree train`
removes from a run dir). The rename is atomic on POSIX file systems and on Windows (NTFS).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# mkstemp creates its file readable by the owner only; a written file gets the permissions a
# plain open() would give it (0o666 minus the umask). The umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for the values results hold besides plain JSON: paths (as
    strings) and numpy/torch arrays and scalars (through their `tolist()`). TypeError otherwise."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """`obj` as JSON text (no trailing newline), paths and arrays converted by `json_default`."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default)


class AtomicFile:
    """A temporary file next to `path` that replaces `path` on `commit()` (or is removed on
    `discard()`). For writers that keep a file open across calls; otherwise use `atomic_write`.

    `mode` is "w" (text, UTF-8 unless `encoding` says otherwise) or "wb". The folder of `path`
    is created when missing.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", encoding: str | None = None):
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.chmod(self.tmp, 0o666 & ~_UMASK)
        if mode == "w":
            self.file: IO = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            self.file = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        """Flush, fsync and rename the temporary file over `path`; returns `path`."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        _fsync_folder(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file; `path` is left as it was."""
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """`with atomic_write(path, "wb") as f: ...`: `path` is replaced only when the block ends
    without an exception; on one, the temporary file is removed and `path` is untouched."""
    out = AtomicFile(path, mode, encoding)
    try:
        yield out.file
    except BaseException:
        out.discard()
        raise
    out.commit()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write `obj` as JSON (`to_json`) plus a newline to `path` atomically; returns `path`."""
    return write_text(path, to_json(obj, indent=indent, sort_keys=sort_keys) + "\n")


__all__ = ["AtomicFile", "atomic_write", "json_default", "to_json", "write_json", "write_text"]
