"""The client's tokens for a secure run: the first validation sequences of a data folder, or
seeded random ones (costs depend on shapes only; fidelity wants real text)."""

from __future__ import annotations

from typing import Any

import torch

from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import UserError

DEFAULT_SEQ_LEN = 32


def make_tokens(spec: dict[str, Any], cfg: ModelConfig) -> tuple[torch.Tensor, str]:
    """The client's (N, T) token ids: the first N validation sequences of a data folder (truncated
    to T), or N seeded random sequences. Returns (tokens, description)."""
    samples = int(spec.get("samples", 1))
    seq_len = spec.get("seq_len")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    data = spec.get("data")
    if data:
        from pi_lnfree.data import load_data_folder

        folder = load_data_folder(data)
        T = int(seq_len) if seq_len else min(cfg.block_size, folder.seq_len)
        if T > folder.seq_len:
            raise UserError(f"--seq-len {T} exceeds the data folder's sequence length {folder.seq_len}")
        if folder.vocab_size > cfg.vocab_size:
            raise UserError(f"data folder vocabulary ({folder.vocab_size}) is larger than the model's ({cfg.vocab_size})")
        if samples > len(folder.valid):
            raise UserError(f"--samples {samples} exceeds the {len(folder.valid)} validation sequences in {data}")
        tokens = torch.from_numpy(folder.valid[:samples, :T].astype("int64"))
        return tokens, f"validation sequences of {data}"
    T = int(seq_len) if seq_len else min(cfg.block_size, DEFAULT_SEQ_LEN)
    if T < 1:
        raise UserError(f"--seq-len must be at least 1, got {T}")
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    tokens = torch.randint(0, cfg.vocab_size, (samples, T), generator=gen)
    return tokens, f"random tokens (seed {int(spec.get('seed', 0))})"


__all__ = ["DEFAULT_SEQ_LEN", "make_tokens"]
