"""Save and load `ckpt.pt` safely.

A checkpoint holds only tensors and plain containers:
`{"model": state_dict, "config": dict, "train": dict, "optimizer": dict | None, "meta": dict}`.
It is always read with `torch.load(..., weights_only=True)`, so opening one never runs code, and
always written atomically (temporary file in the same folder, fsync, rename), so a crash during a
save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from pi_lnfree import __version__
from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import CheckpointError, UserError
from pi_lnfree.files import atomic_write

FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip torch.compile / DDP prefixes so checkpoints always load into a bare `GPT`."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The source tree's commit, looked up once per process (checkpoints are saved often)."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def default_meta() -> dict[str, Any]:
    """Provenance stored in every checkpoint."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_PLAIN = (torch.Tensor, int, float, str, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless `obj` is tensors and plain containers only (what weights_only loads)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN) or type(obj).__module__ not in ("builtins", "torch"):
        raise TypeError(f"{where}: {type(obj).__qualname__} cannot be stored (tensors and plain containers only)")


def save_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    config: ModelConfig | dict[str, Any],
    train: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically. Every value must be a tensor or a plain container."""
    cfg = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
    obj = {
        "model": clean_state_dict(model_state),
        "config": cfg,
        "train": dict(train or {}),
        "optimizer": optimizer,
        "meta": {**default_meta(), **(meta or {})},
    }
    check_plain(obj)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def _unpickler_reason(message: str) -> str:
    """The useful line of torch's weights_only refusal (e.g. "Trying to load unsupported GLOBAL
    posix.system ..."), without the surrounding advice."""
    message = message.split("WeightsUnpickler error:", 1)[-1]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(advice):
            return line.split(" Please use")[0][:200]
    return "unsupported content"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint without executing code. Raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = _unpickler_reason(str(e))
        raise CheckpointError(f"{path}: refused to load (not plain tensors/containers): {first}") from None
    except Exception as e:  # any other failure to parse (EOF, bad zip, bad opcode, ...) means corrupt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path}: not a pi-lnfree checkpoint (no 'model' and 'config' entries)")
    if not isinstance(obj["config"], dict) or not isinstance(obj["model"], dict):
        raise CheckpointError(f"{path}: not a pi-lnfree checkpoint (malformed 'model' or 'config')")
    obj.setdefault("train", {})
    obj.setdefault("optimizer", None)
    obj.setdefault("meta", {})
    return obj


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A `ckpt.pt` path, or a run dir holding one -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "ckpt.pt"
        if not ckpt.is_file():
            raise UserError(f"{path} is a directory without ckpt.pt (give a checkpoint file or a run dir)")
        return ckpt
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return path


# Switches added after checkpoints were written without them, with the value those checkpoints
# were trained under when it differs from the new default (keyed by the switch; applies when the
# stored config lacks it): DyT models before the embedding scale had none.
_OLDER_DEFAULTS = {"dyt_embed_scale": False}


def config_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The checkpoint's `ModelConfig` (CheckpointError when it is not a valid one). A switch the
    stored config lacks takes the value the checkpoint was trained under (`_OLDER_DEFAULTS`),
    else its default."""
    stored = ckpt["config"]
    older = {k: v for k, v in _OLDER_DEFAULTS.items() if isinstance(stored, dict) and k not in stored}
    try:
        return ModelConfig.from_dict({**older, **stored})
    except (UserError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Checkpoint -> (`GPT` in eval mode on `device`, the checkpoint dict)."""
    from pi_lnfree.model import GPT

    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    model = GPT(cfg)
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]), strict=True)
    except RuntimeError as e:
        summary = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: tensors do not match its config: {summary}") from None
    return model.to(device).eval(), ckpt


# Buffers a model may carry that a checkpoint without them leaves at their initial value.
_STATE_BUFFERS = (".std_ema", ".frozen")


def recorded_tokenizer_sha(ckpt: dict[str, Any]) -> str | None:
    """The data folder tokenizer's sha256 recorded by the trainer (in "meta" or "train"), if any."""
    for section in ("meta", "train"):
        part = ckpt.get(section) or {}
        if not isinstance(part, dict):
            continue
        for holder in (part, part.get("data") if isinstance(part.get("data"), dict) else {}):
            sha = holder.get("tokenizer_sha256")
            if sha:
                return str(sha)
    return None


def _padded(model_vocab: int, data_vocab: int) -> bool:
    """Whether the model's vocabulary is the data's rounded up to a multiple of 64 or 128 (the
    usual padding, e.g. Pythia's 50277 -> 50304)."""
    return any(model_vocab == -(-data_vocab // m) * m for m in (64, 128))


def check_same_tokenizer(cfg, folder, ckpt: dict[str, Any]) -> None:
    """UserError unless `folder` was made with the tokenizer the checkpoint was trained on.

    With a tokenizer sha256 recorded in the checkpoint it must equal the folder's (the model's
    vocabulary may then be padded); without one, the vocabulary sizes must match, or the model's
    be the data's padded to a multiple of 64 or 128.
    """
    want = recorded_tokenizer_sha(ckpt)
    have = getattr(folder, "tokenizer_sha256", None)
    if want and have and want != have:
        raise UserError(
            f"data folder tokenizer (sha256 {have[:12]}...) differs from the one the checkpoint was "
            f"trained with ({want[:12]}...): prepare the data with the same tokenizer"
        )
    model_vocab, data_vocab = int(cfg.vocab_size), int(folder.vocab_size)
    same = want and have and want == have
    if model_vocab != data_vocab and not same and not _padded(model_vocab, data_vocab):
        raise UserError(
            f"data folder vocabulary ({data_vocab} tokens) differs from the checkpoint's "
            f"({model_vocab}): prepare the data with the tokenizer the model was trained on"
        )


def load_initial_weights(model, path: str | os.PathLike, folder=None) -> dict[str, Any]:
    """`train.init_from`: copy a checkpoint's weights into a freshly built `model` (same shapes).

    The checkpoint (a file or a run dir) must hold exactly the model's tensors with the same shapes,
    except buffers the model adds for a LayerNorm removal (left at their initial values); when
    `folder` is given it must be made with the checkpoint's tokenizer. Switches that do not change
    shapes (activation, norm eps, ...) may differ: the returned dict lists them under "differs"
    with the checkpoint's "path" and "variant". Raises UserError (one line) otherwise.
    """
    from pi_lnfree.config import variant_label

    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    src_cfg = config_from_checkpoint(ckpt, path)
    if folder is not None:
        check_same_tokenizer(src_cfg, folder, ckpt)
    src = clean_state_dict(ckpt["model"])
    want = model.state_dict()
    if src_cfg.tie_embeddings != model.config.tie_embeddings:
        raise UserError(f"--init-from {path}: tie_embeddings is {src_cfg.tie_embeddings} there and "
                        f"{model.config.tie_embeddings} in the recipe's model")
    missing = [k for k in want if k not in src and not k.endswith(_STATE_BUFFERS)]
    extra = [k for k in src if k not in want]
    bad = [k for k in want if k in src and tuple(src[k].shape) != tuple(want[k].shape)]
    if missing or extra or bad:
        what = (f"{bad[0]} is {tuple(src[bad[0]].shape)} there, {tuple(want[bad[0]].shape)} here" if bad
                else f"tensors missing there: {missing[:3]}" if missing else f"tensors not in the recipe's model: {extra[:3]}")
        raise UserError(f"--init-from {path}: its shapes do not match the recipe's model ({what})")
    model.load_state_dict({**want, **{k: v.to(want[k].dtype) for k, v in src.items()}}, strict=True)
    mine = model.config.to_dict()
    differs = sorted(k for k, v in src_cfg.to_dict().items() if k != "ln_removal" and mine.get(k) != v)
    return {"path": str(path), "variant": variant_label(src_cfg), "differs": differs}
