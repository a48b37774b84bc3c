"""Batches from token chunks: a seeded, resumable random sampler and an ordered validation pass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from pi_lnfree.errors import UserError

if TYPE_CHECKING:
    from pi_lnfree.data import DataFolder


def _as_long(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(rows, dtype=np.int64))


class RandomChunkSampler:
    """Random training batches of whole chunks: every epoch is a fresh permutation of all chunks.

    Epoch e's order is `np.random.default_rng([seed, e]).permutation(n_chunks)`, so the state is
    just (epoch, position): `state_dict()` holds plain ints (safe for `torch.load(weights_only=True)`)
    and a sampler restored with `load_state_dict` yields exactly the batches the original would have.
    A batch that runs past the end of an epoch continues with the next epoch's permutation.
    """

    def __init__(self, chunks: np.ndarray, batch_size: int, seed: int):
        if chunks.ndim != 2 or len(chunks) == 0:
            raise UserError("no training chunks to sample from")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.chunks, self.batch_size, self.seed = chunks, int(batch_size), int(seed)
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))

    def next_indices(self) -> np.ndarray:
        """The chunk indices of the next batch (advances the sampler)."""
        taken = []
        need = self.batch_size
        while need:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(need, len(self._order) - self.position)
            taken.append(self._order[self.position : self.position + step])
            self.position += step
            need -= step
        return np.concatenate(taken)

    def next_batch(self) -> torch.Tensor:
        """The next (batch_size, seq_len) LongTensor of token ids."""
        return _as_long(self.chunks[self.next_indices()])

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Plain-python state: seed, epoch, position, n_chunks, batch_size."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "n_chunks": len(self.chunks), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`; UserError when it was taken on a different chunk set."""
        n = int(state["n_chunks"])
        if n != len(self.chunks):
            raise UserError(f"sampler state is for {n} training chunks but the data folder has "
                            f"{len(self.chunks)}: resume with the data folder the run started with")
        position = int(state["position"])
        if not 0 <= position <= n:
            raise UserError(f"sampler state position {position} is out of range for {n} chunks")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), position
        self._order = self._permutation(self.epoch)


class ShortValidationSplit(UserError):
    """`batches` x `batch_size` validation sequences were asked for and the split holds fewer.
    The message names the settings to lower: the `eval`/`entropy` commands' `--batches` and
    `--batch-size` unless a caller with other option names re-raises it through `naming`."""

    def __init__(self, path, batches: int, batch_size: int, available: int,
                 options: tuple[str, str] = ("--batches", "--batch-size")):
        self.path, self.batches, self.batch_size, self.available = path, batches, batch_size, available
        super().__init__(f"{batches} batches of {batch_size} need {batches * batch_size} validation sequences "
                         f"but {path} has {available}; lower {options[0]} or {options[1]}")

    def naming(self, batches_option: str, batch_size_option: str) -> ShortValidationSplit:
        """The same error, its advice naming the caller's own options."""
        return ShortValidationSplit(self.path, self.batches, self.batch_size, self.available,
                                    (batches_option, batch_size_option))


def iter_valid_batches(folder: DataFolder, batch_size: int, batches: int | None = None
                       ) -> Iterator[torch.Tensor]:
    """The validation split in order, as (B, T) LongTensors.

    With `batches` N: exactly the first N*B validation sequences (UserError if the split is
    shorter). Without it: the whole split, the last batch possibly partial.
    """
    valid = folder.valid
    if len(valid) == 0:
        raise UserError(f"the validation split of {folder.path} is empty; prepare it with a larger "
                        "--valid-fraction or corpus")
    if batch_size < 1 or (batches is not None and batches < 1):
        raise UserError(f"--batch-size and --batches must be at least 1 (got {batch_size}, {batches})")
    if batches is None:
        stop = len(valid)
    else:
        stop = batch_size * batches
        if stop > len(valid):
            raise ShortValidationSplit(folder.path, batches, batch_size, len(valid))
    for start in range(0, stop, batch_size):
        yield _as_long(valid[start : min(start + batch_size, stop)])


def to_device(batch: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move a CPU batch to `device`: pinned memory and a non-blocking copy on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
