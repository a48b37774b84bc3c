"""Checkpoints: round trip, atomic writes, and every kind of bad file rejected without running code."""

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from pi_lnfree.checkpoint import load_checkpoint, load_model, save_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.errors import CheckpointError
from pi_lnfree.model import GPT


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(make_config("tiny", "sm-lrelu-global", vocab_size=61))


def test_round_trip_restores_identical_outputs(tmp_path, model):
    path = tmp_path / "ckpt.pt"
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    save_checkpoint(path, model.state_dict(), model.config, train={"step": 7}, optimizer=opt.state_dict())
    loaded, ckpt = load_model(path)
    idx = torch.randint(0, 61, (2, 10))
    torch.testing.assert_close(loaded(idx), model.eval()(idx), rtol=0, atol=0)
    assert ckpt["train"]["step"] == 7 and ckpt["meta"]["torch_version"] == torch.__version__
    assert set(ckpt["optimizer"]) == {"state", "param_groups"}
    assert loaded.config == model.config


def test_compile_and_ddp_prefixes_are_stripped(tmp_path, model):
    state = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "c.pt", state, model.config)
    assert not any(k.startswith(("_orig_mod", "module")) for k in load_checkpoint(tmp_path / "c.pt")["model"])
    load_model(tmp_path / "c.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path, model, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model.state_dict(), model.config, train={"step": 1})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(os, "fsync", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model.state_dict(), model.config, train={"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["train"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left behind


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, model):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model.state_dict(), model.config, train={"step": 1})
    code = f"""
import torch, os, signal
from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.config import make_config
from pi_lnfree.model import GPT
m = GPT(make_config("cpu-small", "sm-g", vocab_size=4096))
real_save = torch.save
def save_then_die(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # dies after writing the temp file, before the rename
torch.save = save_then_die
save_checkpoint({str(path)!r}, m.state_dict(), m.config, train={{"step": 2}})
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == -9
    assert load_checkpoint(path)["train"]["step"] == 1


def test_truncated_file_is_rejected(tmp_path, model):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model.state_dict(), model.config)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_files_are_rejected(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a pi-lnfree checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create a file if unpickled


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused") as exc:
        load_checkpoint(path)
    assert not marker.exists()
    reason = str(exc.value).lower()
    assert "global" in reason and "io.open" in reason and "weights_only" not in reason  # no unsafe advice
    # Also a raw pickle (not a torch zip file).
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_config_that_does_not_match_tensors(tmp_path, model):
    cfg = model.config.to_dict() | {"n_embd": 128}
    save_checkpoint(tmp_path / "c.pt", model.state_dict(), cfg)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "c.pt")
    save_checkpoint(tmp_path / "d.pt", model.state_dict(), model.config.to_dict() | {"bogus": 1})
    with pytest.raises(CheckpointError, match="bad model config"):
        load_model(tmp_path / "d.pt")


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path, capsys):
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x", "y")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "o.pt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
