"""One party's offline material for one forward: int64 tensors written in the order the online
phase will consume them, kept in memory or in a spool file (`pi_lnfree.secure.phases`)."""

from __future__ import annotations

import os
import tempfile

import torch

from pi_lnfree.errors import UserError


class PhaseError(RuntimeError):
    """The online phase asked for something the offline phase did not prepare, or tried to
    reach the dealer."""


class Material:
    """One party's offline material for one forward: int64 tensors in consumption order.

    In memory: one flat tensor, filled in order, handed out as views. Spooled: a private temp
    file written in order and read back in order (for material larger than the budget).
    """

    def __init__(self, total_elements: int, device: str = "cpu", spool_dir: str | None = None):
        self.total = int(total_elements)
        self.device = device
        self._pos = 0
        self._file = None
        self._flat = None
        if spool_dir is not None:
            if not str(device).startswith("cpu"):
                raise UserError("spooled offline material needs --device cpu")
            fd, self.path = tempfile.mkstemp(prefix="pi-lnfree-material-", dir=spool_dir)
            self._file = os.fdopen(fd, "w+b")
        else:
            self.path = None
            self._flat = torch.empty(self.total, dtype=torch.long, device=device)

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def append(self, chunk: torch.Tensor) -> None:
        """Add 1-D int64 data at the end (offline)."""
        n = chunk.numel()
        if self._pos + n > self.total:
            raise PhaseError(f"offline material overflow: {self._pos + n} > {self.total} elements")
        if self._file is not None:
            self._file.write(chunk.detach().cpu().contiguous().numpy().tobytes())
        else:
            self._flat[self._pos:self._pos + n] = chunk.reshape(-1)
        self._pos += n

    def seal(self) -> None:
        """End of the offline phase: every element is there; reading starts at the front."""
        if self._pos != self.total:
            raise PhaseError(f"offline material incomplete: {self._pos} of {self.total} elements")
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
        self._pos = 0

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The next tensor of `shape` (online)."""
        n = 1
        for s in shape:
            n *= int(s)
        if self._pos + n > self.total:
            raise PhaseError(f"offline material exhausted: {n} more elements asked at {self._pos} of {self.total}")
        if self._file is not None:
            out = torch.empty(n, dtype=torch.long)
            got = self._file.readinto(memoryview(out.numpy()).cast("B"))
            if got != 8 * n:
                raise PhaseError("offline material file is shorter than written")
            out = out.view(shape)
        else:
            out = self._flat[self._pos:self._pos + n].view(shape)
        self._pos += n
        return out

    @property
    def exhausted(self) -> bool:
        return self._pos == self.total

    def close(self) -> None:
        """Free the memory or delete the spool file."""
        self._flat = None
        if self._file is not None:
            self._file.close()
            os.unlink(self.path)
            self._file = None


__all__ = ["Material", "PhaseError"]
