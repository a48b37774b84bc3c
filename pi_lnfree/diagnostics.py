"""Diagnostics on a checkpoint: perplexity, headwise attention entropy, entropy bands, dynamics.

Headwise entropy follows eq. 8 of the paper: for head h of layer l with causal attention matrix
A (T x T, rows sum to 1), E(l, h) = -(1/T) * sum_i sum_j A[i, j] * log(A[i, j] + eps). It is
computed from the explicit softmax probabilities (`model(idx, return_attention=True)`), never from
a fused kernel, and accumulated in float64.

Both `evaluate` and `entropy_report` read the validation split in order: `batch_size` B and
`batches` N mean the first N*B validation sequences (all of them when N is None), so two tools
given the same numbers see the same tokens. Perplexity predicts tokens 1..T-1 of each sequence
from the ones before; entropy is computed on whole sequences (all T positions).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pi_lnfree.attention_check import attention_check, max_causal_entropy
from pi_lnfree.errors import UserError

DEFAULT_EPS = 1e-12
BAND_KEYS = ("0-25", "25-50", "50-75", "75-100")


# ---------------------------------------------------------------------------------------------
# entropy of one batch


@torch.no_grad()
def headwise_entropy(model, idx: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Eq. 8 entropy of every head on the token batch `idx` (B, T), averaged over the batch.

    Returns a float64 tensor of shape (n_layer, n_head) on the CPU. The model's train/eval mode
    is left as it is (the model has no dropout, so both give the same probabilities).
    """
    _, attentions = model(idx, return_attention=True)
    return torch.stack([_entropy_of_probs(att, eps).mean(dim=0) for att in attentions]).cpu()


def _entropy_of_probs(att: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, H, T, T) probabilities -> (B, H) eq. 8 entropies in float64."""
    p = att.double()
    per_query = -(p * torch.log(p + eps)).sum(dim=-1)  # (B, H, T); masked keys have p = 0
    return per_query.mean(dim=-1)


# ---------------------------------------------------------------------------------------------
# bands


def entropy_bands(entropy: np.ndarray | list, emax: float | None = None) -> dict[str, Any]:
    """Fractions of heads in [0, Emax/4), [Emax/4, Emax/2), [Emax/2, 3Emax/4), [3Emax/4, Emax].

    `entropy` is (n_layer, n_head); Emax defaults to its largest value (the paper's definition).
    Returns `{"emax", "bands", "bands_per_layer", "overload_fraction"}`; the overload fraction is
    the share of heads in the top band. When Emax is 0 (every head fully collapsed), every head
    equals Emax and so lies in the top band.
    """
    e = np.asarray(entropy, dtype=np.float64)
    if e.ndim != 2 or e.size == 0:
        raise UserError(f"entropy must be a non-empty (layers, heads) matrix, got shape {e.shape}")
    emax = float(e.max()) if emax is None else float(emax)
    if emax > 0:
        idx = np.clip(np.floor(4.0 * e / emax), 0, 3).astype(int)
    else:
        idx = np.full(e.shape, 3)

    def fractions(band_idx: np.ndarray) -> dict[str, float]:
        counts = np.bincount(band_idx.ravel(), minlength=4)
        return {k: float(c) / band_idx.size for k, c in zip(BAND_KEYS, counts, strict=True)}

    bands = fractions(idx)
    return {
        "emax": emax,
        "bands": bands,
        "bands_per_layer": [fractions(row) for row in idx],
        "overload_fraction": bands["75-100"],
    }


# ---------------------------------------------------------------------------------------------
# inputs: data compatibility


def check_fits(cfg, folder, n_positions: int) -> None:
    """UserError unless the model with config `cfg` can read `folder`'s tokens: every token id
    inside its vocabulary, `n_positions` per sequence within its context."""
    if int(folder.vocab_size) > int(cfg.vocab_size):
        raise UserError(
            f"data folder vocabulary ({folder.vocab_size} tokens) is larger than the model's "
            f"({cfg.vocab_size}): prepare the data with the tokenizer the model was trained on"
        )
    if n_positions > cfg.block_size:
        raise UserError(
            f"data sequences need {n_positions} positions but the model's context is {cfg.block_size}: "
            f"prepare the data with --seq-len {cfg.block_size + folder.seq_len - n_positions} or less"
        )


def _batches(folder, batch_size: int, batches: int | None, device) -> tuple[Iterator, int]:
    """(iterator of (B, T) LongTensors on `device` over the first batches*batch_size validation
    sequences, number of batches). The iterator raises UserError on an empty split or bad sizes."""
    from pi_lnfree.batches import iter_valid_batches, to_device

    total = batches if batches is not None else -(-len(folder.valid) // max(batch_size, 1))
    return (to_device(b, device) for b in iter_valid_batches(folder, batch_size, batches)), total


def _run_batches(
    model, folder, batch_size: int, batches: int | None, description: str, show_progress: bool,
    step: Callable[[torch.Tensor], None],
) -> None:
    """Call `step` on each validation batch (on the model's device), with a progress bar on
    stderr when asked."""
    from pi_lnfree.progress import progress

    it, total = _batches(folder, batch_size, batches, next(model.parameters()).device)
    if not show_progress:
        for chunk in it:
            step(chunk)
        return
    with progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for chunk in it:
            step(chunk)
            bar.advance(task)


# ---------------------------------------------------------------------------------------------
# perplexity


@torch.no_grad()
def evaluate(model, folder, batch_size: int = 16, batches: int | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Mean cross-entropy and perplexity on the first `batches` x `batch_size` validation
    sequences: inputs chunk[:, :-1], targets chunk[:, 1:]; losses summed in float64.

    Returns `{"loss", "ppl", "tokens", "sequences"}` (ppl = exp(loss)).
    """
    check_fits(model.config, folder, folder.seq_len - 1)
    total = {"loss": 0.0, "tokens": 0, "sequences": 0}

    def step(chunk: torch.Tensor) -> None:
        logits = model(chunk[:, :-1])
        targets = chunk[:, 1:]
        losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        total["loss"] += float(losses.double().sum())
        total["tokens"] += targets.numel()
        total["sequences"] += chunk.size(0)

    _run_batches(model, folder, batch_size, batches, "eval", show_progress, step)
    loss = total["loss"] / total["tokens"]
    return {"loss": loss, "ppl": math.exp(loss), "tokens": total["tokens"], "sequences": total["sequences"]}


# ---------------------------------------------------------------------------------------------
# entropy over the validation split


@torch.no_grad()
def entropy_matrix(
    model, folder, batch_size: int = 16, batches: int | None = None, eps: float = DEFAULT_EPS,
    show_progress: bool = False,
) -> tuple[np.ndarray, int]:
    """Headwise entropy (n_layer, n_head) averaged over the first `batches` x `batch_size`
    validation sequences (each sequence weighted equally), and the number of sequences."""
    check_fits(model.config, folder, folder.seq_len)
    acc = {"sum": torch.zeros(model.config.n_layer, model.config.n_head, dtype=torch.float64), "n": 0}

    def step(chunk: torch.Tensor) -> None:
        acc["sum"] += headwise_entropy(model, chunk, eps) * chunk.size(0)
        acc["n"] += chunk.size(0)

    _run_batches(model, folder, batch_size, batches, "entropy", show_progress, step)
    return (acc["sum"] / acc["n"]).numpy(), acc["n"]


def entropy_report(
    model, folder, batch_size: int = 16, batches: int | None = None, eps: float = DEFAULT_EPS,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Headwise entropy, Emax bands (overall and per layer), overload fraction, the same
    values relative to the theoretical maximum `max_entropy` (uniform causal attention), and the
    learned-attention check (`attention_check.attention_check`: uniform heads, spread, verdict).

    Keys: entropy, emax, bands, bands_per_layer, overload_fraction, entropy_per_layer,
    max_entropy, entropy_relative, emax_relative, attention, sequences, seq_len, eps.
    """
    e, n = entropy_matrix(model, folder, batch_size, batches, eps, show_progress)
    hmax = max_causal_entropy(int(folder.seq_len))
    bands = entropy_bands(e)
    return {
        "entropy": e.tolist(),
        **bands,
        "entropy_per_layer": e.mean(axis=1).tolist(),
        "max_entropy": hmax,
        "entropy_relative": (e / hmax).tolist(),
        "emax_relative": bands["emax"] / hmax,
        "attention": attention_check(e, int(folder.seq_len)),
        "sequences": n,
        "seq_len": int(folder.seq_len),
        "eps": eps,
    }


# ---------------------------------------------------------------------------------------------
# dynamics from a run dir's metrics.jsonl


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a run's metrics.jsonl (a run dir or the file itself), in order.

    A truncated last line (a run interrupted mid-write) is skipped; a malformed line elsewhere
    is an error.
    """
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no metrics history: {file} not found")
    lines = file.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise UserError(f"{file}: line {i + 1} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise UserError(f"{file}: line {i + 1} is not a JSON object")
        records.append(rec)
    return records


def entropy_dynamics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Entropy per layer (mean over heads) and learnable slopes over training steps.

    From metrics records, keeps lines with an "entropy" matrix; returns `{"steps",
    "tokens", "entropy" ([step][layer][head]), "entropy_per_layer" ([step][layer]), "slope_steps",
    "slopes" ([step][slope])}`; the slope lists are empty when the run has no learnable slopes.
    """
    rows = [r for r in records if r.get("entropy")]
    if not rows:
        raise UserError("the run's metrics.jsonl has no entropy history (was entropy logging on?)")
    shapes = {np.asarray(r["entropy"], dtype=np.float64).shape for r in rows}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise UserError(f"inconsistent entropy matrices in the history: shapes {sorted(shapes)}")
    slope_rows = [r for r in records if r.get("slopes")]
    return {
        "steps": [int(r["step"]) for r in rows],
        "tokens": [int(r.get("tokens", 0)) for r in rows],
        "entropy": [r["entropy"] for r in rows],
        "entropy_per_layer": [np.asarray(r["entropy"], dtype=np.float64).mean(axis=1).tolist() for r in rows],
        "slope_steps": [int(r["step"]) for r in slope_rows],
        "slopes": [[float(s) for s in r["slopes"]] for r in slope_rows],
    }


def find_metrics(path: str | os.PathLike) -> Path:
    """metrics.jsonl of a run dir, of the run dir holding a checkpoint, or the file itself."""
    path = Path(path)
    if path.is_dir():
        return path / "metrics.jsonl"
    return path if path.suffix == ".jsonl" else path.parent / "metrics.jsonl"


# ---------------------------------------------------------------------------------------------
# whole commands: checkpoint + data folder -> result dicts (the CLI prints them)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint_and_data(ckpt_path, data_dir, device=None):
    """Load a checkpoint (file or run dir) and a data folder made with its tokenizer (whether the
    sequences fit the model's context is checked by `evaluate` / `entropy_matrix`).
    Returns (model, folder, identity dict).
    """
    from pi_lnfree.checkpoint import check_same_tokenizer, load_model, resolve_checkpoint
    from pi_lnfree.config import variant_label, variant_name
    from pi_lnfree.data import load_data_folder

    path = resolve_checkpoint(ckpt_path)
    folder = load_data_folder(data_dir)
    model, ckpt = load_model(path, device or default_device())
    check_same_tokenizer(model.config, folder, ckpt)
    identity = {"checkpoint": str(path), "variant": variant_name(model.config), "label": variant_label(model.config)}
    return model, folder, identity


def eval_checkpoint(ckpt_path, data_dir, batch_size: int = 16, batches: int | None = None,
                    show_progress: bool = False) -> dict[str, Any]:
    """`pi-lnfree eval`: {"loss", "ppl", "tokens", "sequences", "checkpoint", "variant", "label"}."""
    model, folder, identity = load_checkpoint_and_data(ckpt_path, data_dir)
    return {**evaluate(model, folder, batch_size, batches, show_progress), **identity}


def entropy_checkpoint(ckpt_path, data_dir, batch_size: int = 16, batches: int | None = None,
                       eps: float = DEFAULT_EPS, show_progress: bool = False) -> dict[str, Any]:
    """`pi-lnfree entropy`: `entropy_report` plus "checkpoint", "variant", "label"."""
    model, folder, identity = load_checkpoint_and_data(ckpt_path, data_dir)
    return {**entropy_report(model, folder, batch_size, batches, eps, show_progress), **identity}


def run_dynamics(path: str | os.PathLike) -> dict[str, Any]:
    """Entropy/slope history of a run (run dir, its ckpt.pt, or metrics.jsonl) plus the
    variant of its checkpoint when one is there."""
    metrics = find_metrics(path)
    dyn = {**entropy_dynamics(read_metrics(metrics)), "metrics": str(metrics)}
    ckpt = metrics.parent / "ckpt.pt"
    if ckpt.is_file():
        from pi_lnfree.checkpoint import config_from_checkpoint, load_checkpoint
        from pi_lnfree.config import variant_label, variant_name

        obj = load_checkpoint(ckpt)
        cfg = config_from_checkpoint(obj, ckpt)
        dyn.update(variant=variant_name(cfg), label=variant_label(cfg), slope_labels=_slope_labels(cfg))
        seq_len = (obj.get("meta") or {}).get("seq_len")  # the trainer logs entropy on whole sequences
        if seq_len:
            dyn["max_entropy"] = max_causal_entropy(int(seq_len))
    return dyn


def _slope_labels(cfg) -> list[str]:
    """Legend label of each learnable slope: the layer(s) that use it."""
    users: dict[int, list[int]] = {}
    for layer, k in enumerate(cfg.slope_index()):
        if k is not None:
            users.setdefault(k, []).append(layer)
    labels = []
    for k in sorted(users):
        layers = users[k]
        if len(layers) == 1:
            labels.append(f"layer {layers[0]}")
        elif len(layers) == cfg.n_layer:
            labels.append("shared by all layers")
        else:
            labels.append("shared by layers " + ",".join(map(str, layers)))
    return labels
