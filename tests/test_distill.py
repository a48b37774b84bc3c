"""Distillation from a frozen LN teacher: the loss against torch's kl_div in float64, a tiny run
whose student gets closer to the teacher than a CE-only student, refusals of a foreign teacher, and
an exact resume of a run that distills and regularizes entropy at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pi_lnfree.checkpoint import load_checkpoint, load_model, save_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.data import load_data_folder
from pi_lnfree.distill import distillation_loss, file_sha256, load_teacher, softened_kl
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT
from pi_lnfree.report import open_run
from pi_lnfree.runs import train_command
from pi_lnfree.train import TrainingStopped

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "tiny.toml"


def _sets(data_dir: Path, *extra: str) -> list[str]:
    return [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "train.entropy_interval=0", *extra]


def test_distillation_loss_matches_torch_kl_div_in_float64():
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(3, 7, 50, generator=g, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(3, 7, 50, generator=g, dtype=torch.float64) * 3
    ce = torch.tensor(2.5, dtype=torch.float64)
    T, w = 2.5, 0.3
    loss, kl = distillation_loss(ce, student, teacher, T, w)
    ref_kl = F.kl_div(F.log_softmax(student.reshape(-1, 50) / T, -1), F.log_softmax(teacher.reshape(-1, 50) / T, -1),
                      log_target=True, reduction="batchmean")
    assert abs(kl.item() - ref_kl.item()) < 1e-12 and kl.item() > 0
    assert abs(loss.item() - ((1 - w) * 2.5 + w * T * T * ref_kl.item())) < 1e-12
    (grad,) = torch.autograd.grad(loss, student)
    (ref_grad,) = torch.autograd.grad(w * T * T * ref_kl, student)
    assert torch.allclose(grad, ref_grad, atol=1e-14)
    # the closed form of the gradient: w T (p_s - p_t) / positions
    closed = w * T * (F.softmax(student / T, -1) - F.softmax(teacher / T, -1)) / 21
    assert torch.allclose(grad, closed.detach(), atol=1e-14)
    assert softened_kl(teacher, teacher, T).abs().item() < 1e-12


def _kl_to_teacher(student: GPT, teacher: GPT, folder, n: int = 32) -> float:
    """Mean KL(teacher || student) at T = 1 over the first n validation sequences."""
    x = torch.as_tensor(np.asarray(folder.valid[:n], dtype=np.int64))[:, :-1]
    with torch.no_grad():
        return softened_kl(student(x), teacher(x), 1.0).item()


def test_tiny_student_gets_closer_to_its_teacher(data_dir, tiny_ln_run, tmp_path):
    """An SM+R student of another shape (1 layer, d = 48), 40 steps: distilled (w = 0.9) vs CE only."""
    student_sets = _sets(data_dir, "model.variant=sm-r", "model.n_layer=1", "model.n_embd=48", "train.max_steps=40",
                         "train.log_interval=10", "train.eval_interval=0")
    train_command(TINY, student_sets, tmp_path / "ce")
    kd = [*student_sets, f"train.distill_from={json.dumps(str(tiny_ln_run))}", "train.distill_weight=0.9"]
    res = train_command(TINY, kd, tmp_path / "kd")
    folder = load_data_folder(data_dir)
    teacher, _ = load_model(tiny_ln_run / "ckpt.pt")
    torch.manual_seed(1337)  # the students' initialization (train.seed)
    start = GPT(load_model(tmp_path / "kd" / "ckpt.pt")[0].config).eval()
    kl0 = _kl_to_teacher(start, teacher, folder)
    kl_kd = _kl_to_teacher(load_model(tmp_path / "kd" / "ckpt.pt")[0], teacher, folder)
    kl_ce = _kl_to_teacher(load_model(tmp_path / "ce" / "ckpt.pt")[0], teacher, folder)
    print(f"KL(teacher || student): initial {kl0:.4f}, CE only {kl_ce:.4f}, distilled {kl_kd:.4f}")
    assert kl_kd < 0.5 * kl0 and kl_kd < kl_ce
    logged = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["distill_kl"] for r in logged if "distill_kl" in r]
    assert len(kls) == 4 and kls[-1] < kls[0]
    meta = load_checkpoint(tmp_path / "kd" / "ckpt.pt")["meta"]
    assert meta["distilled_from"]["label"] == "SM+LN+G" and res["label"] == "SM+R [KD from SM+LN+G]"
    assert open_run(tmp_path / "kd").label == res["label"] and open_run(tmp_path / "ce").label == "SM+R"
    frozen, info = load_teacher(tiny_ln_run, start.config, folder, 63, torch.device("cpu"))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert info["sha256"] == file_sha256(tiny_ln_run / "ckpt.pt")


def test_a_foreign_teacher_is_refused_in_one_line(data_dir, tiny_ln_run, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_ln_run / "ckpt.pt")
    other_tok = tmp_path / "other-tokenizer.pt"
    save_checkpoint(other_tok, ckpt["model"], ckpt["config"], meta={**ckpt["meta"], "tokenizer_sha256": "ab" * 32})
    with pytest.raises(UserError, match=r"distillation teacher .*tokenizer"):
        train_command(TINY, _sets(data_dir, "train.max_steps=1", f"train.distill_from={json.dumps(str(other_tok))}"),
                      tmp_path / "a")
    padded = tmp_path / "padded-vocab.pt"  # same tokenizer, vocabulary padded to 640: logits would not line up
    save_checkpoint(padded, GPT(make_config("tiny", vocab_size=640)).state_dict(), make_config("tiny", vocab_size=640),
                    meta={"tokenizer_sha256": ckpt["meta"]["tokenizer_sha256"]})
    with pytest.raises(UserError, match="vocabulary of 640 tokens, the student 512"):
        train_command(TINY, _sets(data_dir, "train.max_steps=1", f"train.distill_from={json.dumps(str(padded))}"),
                      tmp_path / "b")
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(TINY), "--out", str(tmp_path / "c"),
              *[a for s in _sets(data_dir, f"train.distill_from={tmp_path / 'missing'}") for a in ("--set", s)]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1


def test_resume_with_distillation_and_entropy_reg_is_bit_exact(data_dir, tiny_ln_run, tmp_path):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(tiny_ln_run / "ckpt.pt", teacher)
    sets = _sets(data_dir, "model.variant=sm-r", "train.max_steps=12", "train.grad_accum=2", "train.ckpt_interval=3",
                 "train.log_interval=1", "train.eval_interval=0", f"train.distill_from={json.dumps(str(teacher))}",
                 "train.entropy_reg=0.001", "train.entropy_interval=6")
    train_command(TINY, sets, tmp_path / "ref")
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"\(step 6\)"):
        train_command(TINY, [*sets, "train.debug_nonfinite_steps=[8]", "train.max_nonfinite=1"], run)
    train_command(TINY, sets, run, resume=True)
    want, got = load_checkpoint(tmp_path / "ref" / "ckpt.pt"), load_checkpoint(run / "ckpt.pt")
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    assert torch.equal(want["train"]["entropy_thresholds"], got["train"]["entropy_thresholds"])

    def lines(d):
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]

    assert lines(run) == lines(tmp_path / "ref")
    shutil.copy(tmp_path / "ref" / "ckpt.pt", teacher)  # another teacher under the same path
    with pytest.raises(UserError, match="not the file"):
        train_command(TINY, sets, run, resume=True)
