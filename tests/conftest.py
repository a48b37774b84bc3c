"""Shared fixtures. `data_dir`: a small real data folder (Python stdlib, byte-level BPE), prepared once."""

from __future__ import annotations

from pathlib import Path

import pytest

# The shared test corpus: the first 1.5 MB (sorted by path) of the interpreter's standard library,
# a 512-token BPE and 64-token chunks; 10% of files go to validation. About 10K train and a few
# hundred validation chunks, prepared in a few seconds.
DATA_DIR_ARGS = dict(source="python-stdlib", vocab_size=512, seq_len=64, valid_fraction=0.1, limit_mb=1.5)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A prepared data folder (Path) with non-empty train and validation splits."""
    from pi_lnfree.data import prepare

    out = tmp_path_factory.mktemp("data") / "stdlib-512"
    manifest = prepare(out=out, **DATA_DIR_ARGS)
    assert manifest["chunks"]["valid"] >= 64 and manifest["chunks"]["train"] >= 1000
    return out


@pytest.fixture(scope="session")
def tiny_ln_run(data_dir, tmp_path_factory) -> Path:
    """A run dir holding a `tiny` SM+LN+G model trained 150 steps on `data_dir` (a pretrained-like
    LayerNorm model: teacher, starting point of fine-tuning and of LayerNorm removal)."""
    import json

    from pi_lnfree.runs import train_command

    run = tmp_path_factory.mktemp("tiny-ln") / "run"
    recipe = Path(__file__).resolve().parents[1] / "training" / "tiny.toml"
    sets = [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "train.max_steps=150",
            "train.eval_interval=150", "train.ckpt_interval=150", "train.entropy_interval=0"]
    train_command(recipe, sets, run)
    return run
