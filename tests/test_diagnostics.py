"""Diagnostics: headwise entropy (eq. 8), bands, perplexity, dynamics, figures, and the CLI.

References are independent of the code under test: hand computations in float64 numpy, Hugging
Face's eager attention probabilities, and a float64 per-sequence loss loop.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pi_lnfree.attention_check import attention_check
from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.diagnostics import (
    entropy_bands,
    entropy_dynamics,
    headwise_entropy,
    max_causal_entropy,
    read_metrics,
    run_dynamics,
)
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT

V = 61


def _np_eq8(att: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Eq. 8 by hand: att (B, H, T, T) -> (H,) mean over batch and queries of -sum p log p."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(att > 0, att * np.log(att + eps), 0.0)
    return -(terms.sum(axis=-1)).mean(axis=(0, 2))


def _peaked(model: GPT, gain: float = 3.0, embeddings: bool = True) -> GPT:
    """Large QK projections (and unit-scale embeddings unless told otherwise), so attention is
    far from uniform (the default init gives near-uniform attention: a weak test)."""
    torch.manual_seed(3)
    d = model.config.n_embd
    with torch.no_grad():
        if embeddings:
            model.wte.weight.normal_(0.0, 1.0)
            model.wpe.weight.normal_(0.0, 1.0)
        for block in model.blocks:
            w = block.attn.c_attn.weight
            w.normal_(0.0, gain / math.sqrt(d))
            hd = model.config.head_dim
            for h in range(model.config.n_head):  # query gain grows with the head index
                w[h * hd:(h + 1) * hd] *= 0.5 + h
    return model.eval()


# ---------------------------------------------------------------------------------------------
# eq. 8 against hand computations


def test_uniform_attention_gives_mean_log_of_visible_keys():
    cfg = make_config("tiny", "sm-r", vocab_size=V, n_layer=1)
    model = GPT(cfg).eval()
    with torch.no_grad():  # zero queries and keys: every query attends uniformly to its i+1 keys
        model.blocks[0].attn.c_attn.weight.zero_()
        model.blocks[0].attn.c_attn.bias.zero_()
    T = 24
    e = headwise_entropy(model, torch.randint(0, V, (3, T)))
    expected = sum(math.log(i + 1) for i in range(T)) / T
    assert e.dtype == torch.float64 and e.shape == (1, cfg.n_head)
    torch.testing.assert_close(e, torch.full((1, cfg.n_head), expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert max_causal_entropy(T) == pytest.approx(expected, rel=1e-12)


def test_entropy_matches_float64_hand_computation_of_one_layer():
    """1-layer LN-free model: attention input is the embedding sum, so softmax(q k^T / sqrt(d))
    can be computed by hand in float64 from the weights."""
    cfg = make_config("tiny", "sm-r", vocab_size=V, n_layer=1, n_head=2, n_embd=16)
    model = _peaked(GPT(cfg))
    B, T, H, d = 2, 12, cfg.n_head, cfg.head_dim
    idx = torch.randint(0, V, (B, T))
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    x = sd["wte.weight"][idx.numpy()] + sd["wpe.weight"][:T]
    qkv = x @ sd["blocks.0.attn.c_attn.weight"].T + sd["blocks.0.attn.c_attn.bias"]
    q, k = (qkv[..., s * cfg.n_embd:(s + 1) * cfg.n_embd].reshape(B, T, H, d).transpose(0, 2, 1, 3) for s in (0, 1))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    att = np.exp(scores - scores.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    expected = _np_eq8(att)
    assert expected.min() < 0.6 * max_causal_entropy(T)  # really peaked, not a near-uniform case
    np.testing.assert_allclose(headwise_entropy(model, idx).numpy()[0], expected, atol=1e-5)


def test_entropy_matches_hugging_face_output_attentions():
    transformers = pytest.importorskip("transformers")
    from pi_lnfree.hf import to_hf

    model = _peaked(GPT(make_config("tiny", "sm-ln-g", vocab_size=V)), gain=1.0)
    with torch.no_grad():  # non-trivial LayerNorm parameters too
        for block in model.blocks:
            block.ln_1.weight.uniform_(0.5, 1.5)
            block.ln_1.bias.normal_(0.0, 0.1)
    hf = to_hf(model)
    hf.set_attn_implementation("eager")
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    idx = torch.randint(0, V, (3, 32))
    with torch.no_grad():
        hf_att = hf(idx, output_attentions=True).attentions
    expected = np.stack([_np_eq8(a.double().numpy()) for a in hf_att])
    np.testing.assert_allclose(headwise_entropy(model, idx).numpy(), expected, atol=1e-5)
    assert np.ptp(expected) > 0.5  # heads differ: the comparison is not between constants


# ---------------------------------------------------------------------------------------------
# bands


def test_bands_by_hand_including_boundaries():
    emax = 4.0
    e = [[0.0, 0.99, 1.0, 2.0],  # 0-25, 0-25, 25-50 (boundary Emax/4), 50-75 (boundary Emax/2)
         [2.99, 3.0, 3.5, emax]]  # 50-75, 75-100 (boundary 3Emax/4), 75-100, 75-100
    b = entropy_bands(e)
    assert b["emax"] == emax
    assert b["bands"] == {"0-25": 2 / 8, "25-50": 1 / 8, "50-75": 2 / 8, "75-100": 3 / 8}
    assert b["bands_per_layer"] == [
        {"0-25": 0.5, "25-50": 0.25, "50-75": 0.25, "75-100": 0.0},
        {"0-25": 0.0, "25-50": 0.0, "50-75": 0.25, "75-100": 0.75},
    ]
    assert b["overload_fraction"] == 3 / 8
    collapsed = entropy_bands([[0.0, 0.0]])  # Emax = 0: every head equals Emax
    assert collapsed["overload_fraction"] == 1.0
    with pytest.raises(UserError):
        entropy_bands([])


# ---------------------------------------------------------------------------------------------
# dynamics from a run dir (no data folder needed)


def _fake_run(tmp_path: Path, variant: str = "sm-lrelu-global", entropy: bool = True) -> Path:
    run = tmp_path / f"run-{variant}"
    cfg = make_config("tiny", variant, vocab_size=V)
    save_checkpoint(run / "ckpt.pt", GPT(cfg).state_dict(), cfg, meta={"seq_len": 64})
    lines = []
    for step in range(0, 50, 10):
        lines.append({"step": step, "tokens": step * 64, "loss": 5.0 - step / 100, "lr": 1e-3})
        if entropy:
            ent = [[1.0 + step / 100 + layer + head / 10 for head in range(cfg.n_head)] for layer in range(cfg.n_layer)]
            lines.append({"step": step, "tokens": step * 64, "entropy": ent,
                          "slopes": [0.01 - step / 1000] * cfg.n_slopes})
        lines.append({"step": step, "tokens": step * 64, "eval_loss": 5.0, "eval_ppl": math.exp(5.0)})
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 50, "tok'  # truncated last line
    (run / "metrics.jsonl").write_text(text)
    return run


def test_dynamics_from_metrics(tmp_path):
    run = _fake_run(tmp_path)
    dyn = run_dynamics(run)
    assert dyn["steps"] == [0, 10, 20, 30, 40]
    # mean over 4 heads of 1 + s/100 + layer + head/10 = 1.15 + s/100 + layer
    expected = [[1.15 + s / 100 + layer for layer in range(2)] for s in dyn["steps"]]
    np.testing.assert_allclose(dyn["entropy_per_layer"], expected, atol=1e-12)
    assert dyn["slopes"] == [[pytest.approx(0.01 - s / 1000)] for s in dyn["steps"]]
    assert dyn["label"] == "SM+LLR(global)" and dyn["slope_labels"] == ["shared by all layers"]
    assert dyn["max_entropy"] == pytest.approx(sum(math.log(i) for i in range(1, 65)) / 64)
    no_slopes = entropy_dynamics(read_metrics(_fake_run(tmp_path, "sm-r") / "metrics.jsonl"))
    assert no_slopes["slopes"] == [] and len(no_slopes["steps"]) == 5


def test_dynamics_errors(tmp_path):
    with pytest.raises(UserError, match="no entropy history"):
        run_dynamics(_fake_run(tmp_path, "sm-r", entropy=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        read_metrics(bad)
    with pytest.raises(UserError, match="not found"):
        read_metrics(tmp_path / "nowhere")


def _png_size(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.std() > 0.05  # a real picture, not a blank canvas
    return img.shape[1], img.shape[0]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(result: tuple[int, str, str], match: str) -> None:
    code, out, err = result
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err


def test_cli_dynamics_without_data(tmp_path, capsys):
    run = _fake_run(tmp_path, "sm-lrelu-layer")
    png = tmp_path / "figs" / "dyn.png"
    code, stdout, _ = _cli(capsys, "entropy", run, "--dynamics", png, "--json")
    assert code == 0
    out = json.loads(stdout)
    assert out["dynamics"]["steps"] == [0, 10, 20, 30, 40]
    assert out["dynamics"]["slope_labels"] == ["layer 0", "layer 1"]
    w, h = _png_size(png)
    assert w > h > 300  # two panels side by side
    _assert_one_line_error(_cli(capsys, "entropy", run), "--data")
    _assert_one_line_error(_cli(capsys, "entropy", tmp_path / "missing", "--dynamics", png), "not found")


# ---------------------------------------------------------------------------------------------
# perplexity and entropy over a real data folder (tests/conftest.py: stdlib, vocab 512, T=64)


def _checkpoint(tmp_path: Path, folder, name: str = "ckpt.pt", variant: str = "sm-ln-g",
                sha: str | None = "folder", **overrides) -> Path:
    cfg = make_config("tiny", variant, vocab_size=overrides.pop("vocab_size", folder.vocab_size),
                      block_size=overrides.pop("block_size", folder.seq_len), **overrides)
    torch.manual_seed(0)
    model = _peaked(GPT(cfg), gain=1.0, embeddings=False)  # LayerNorm scales the QK inputs
    meta = {} if sha is None else {"tokenizer_sha256": folder.tokenizer_sha256 if sha == "folder" else sha}
    path = tmp_path / name
    save_checkpoint(path, model.state_dict(), cfg, meta=meta)
    return path


@pytest.fixture(scope="module")
def folder(data_dir):
    from pi_lnfree.data import load_data_folder

    return load_data_folder(data_dir)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, folder) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt"), folder)


def test_perplexity_is_exp_of_float64_mean_token_loss(ckpt, folder):
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.diagnostics import evaluate

    model, _ = load_model(ckpt)
    res = evaluate(model, folder, batch_size=5, batches=3)
    # Independent reference: the first 15 validation rows read straight from the memmap, one
    # sequence at a time, a float64 copy of the model, log-softmax summed in float64.
    ref = model.double()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in np.asarray(folder.valid[:15], dtype=np.int64):
            logits = ref(torch.from_numpy(row[None, :-1]))[0]
            logp = torch.log_softmax(logits, dim=-1)
            total -= float(logp[torch.arange(len(row) - 1), torch.from_numpy(row[1:])].sum())
            count += len(row) - 1
    assert res["tokens"] == count == 15 * (folder.seq_len - 1) and res["sequences"] == 15
    assert res["loss"] == pytest.approx(total / count, rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)
    assert 1.0 < res["ppl"] < 3 * folder.vocab_size  # a loss that means something: not 0, not NaN


def test_entropy_report_averages_whole_sequences(ckpt, folder):
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.diagnostics import entropy_report

    model, _ = load_model(ckpt)
    rep = entropy_report(model, folder, batch_size=3, batches=2)
    rows = torch.from_numpy(np.asarray(folder.valid[:6], dtype=np.int64))
    per_seq = np.stack([headwise_entropy(model, rows[i:i + 1]).numpy() for i in range(6)])
    expected = per_seq.mean(axis=0)
    np.testing.assert_allclose(rep["entropy"], expected, atol=1e-9)
    hmax = max_causal_entropy(folder.seq_len)
    assert rep["max_entropy"] == pytest.approx(sum(math.log(i + 1) for i in range(folder.seq_len)) / folder.seq_len)
    np.testing.assert_allclose(rep["entropy_relative"], expected / hmax, atol=1e-9)
    assert rep["emax"] == pytest.approx(expected.max()) and rep["emax_relative"] == pytest.approx(expected.max() / hmax)
    assert rep["bands"] == entropy_bands(expected)["bands"] and rep["sequences"] == 6
    assert rep["overload_fraction"] == rep["bands"]["75-100"]
    assert len(rep["bands_per_layer"]) == 2 and 0 < expected.min() < expected.max() <= hmax + 1e-9


def test_cli_eval_and_entropy_json_and_heatmap(ckpt, folder, data_dir, tmp_path, capsys):
    code, out, _ = _cli(capsys, "eval", ckpt.parent, "--data", data_dir, "--batch-size", 64, "--json")
    assert code == 0
    ev = json.loads(out)
    assert ev["tokens"] == len(folder.valid) * (folder.seq_len - 1)  # whole split by default
    assert ev["ppl"] == pytest.approx(math.exp(ev["loss"]))
    assert (ev["checkpoint"], ev["variant"], ev["label"]) == (str(ckpt), "sm-ln-g", "SM+LN+G")
    png = tmp_path / "heat.png"
    code, out, err = _cli(capsys, "entropy", ckpt, "--data", data_dir, "--batch-size", 4, "--batches", 2,
                          "--plot", png, "--json")
    assert code == 0
    ent = json.loads(out)
    assert set(ent) >= {"entropy", "emax", "bands", "bands_per_layer", "overload_fraction", "checkpoint",
                        "variant", "label", "max_entropy", "entropy_relative"}
    assert list(ent["bands"]) == ["0-25", "25-50", "50-75", "75-100"] and ent["sequences"] == 8
    assert np.asarray(ent["entropy"]).shape == (2, 4) and "overload fraction" in err
    check = ent["attention"]  # the learned-attention check of the same matrix, printed with the table
    assert check == json.loads(json.dumps(attention_check(ent["entropy"], folder.seq_len)))
    assert f"{check['uniform_heads']}/8 heads uniform" in " ".join(err.split()) and "Emin/Emax" in err
    assert ("not meaningful yet" in err) == (not check["learned"])
    w, h = _png_size(png)
    assert w > 400 and h > 300


def _empty_valid_copy(data_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "empty-valid"
    shutil.copytree(data_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["chunks"]["valid"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "valid.bin").write_bytes(b"")
    return copy


def test_cli_rejects_mismatched_data(folder, data_dir, tmp_path, capsys):
    cases = [
        (_checkpoint(tmp_path, folder, "v.pt", vocab_size=600, sha=None), "vocabulary"),  # vocab only
        (_checkpoint(tmp_path, folder, "p.pt", vocab_size=640, sha=None), "vocabulary"),  # not a round-up
        (_checkpoint(tmp_path, folder, "s.pt", sha="0" * 64), "tokenizer"),
        (_checkpoint(tmp_path, folder, "small.pt", vocab_size=256), "larger"),  # same sha, too small
        (_checkpoint(tmp_path, folder, "b.pt", block_size=folder.seq_len // 2), "context"),
        (tmp_path / "missing.pt", "not found"),
        (tmp_path, "without ckpt.pt"),
    ]
    for path, match in cases:
        _assert_one_line_error(_cli(capsys, "entropy", path, "--data", data_dir), match)
    good = _checkpoint(tmp_path, folder, "g.pt")
    _assert_one_line_error(_cli(capsys, "eval", good, "--data", _empty_valid_copy(data_dir, tmp_path)), "empty")
    _assert_one_line_error(_cli(capsys, "eval", good, "--data", data_dir, "--batches", 0), "at least 1")
    _assert_one_line_error(_cli(capsys, "eval", good, "--data", data_dir, "--batches", 10**6), "lower --batches")
    # eval feeds seq_len - 1 positions: a context of seq_len - 1 is enough for eval, not for entropy
    short = _checkpoint(tmp_path, folder, "short.pt", block_size=folder.seq_len - 1)
    assert _cli(capsys, "eval", short, "--data", data_dir, "--batches", 1)[0] == 0
    _assert_one_line_error(_cli(capsys, "entropy", short, "--data", data_dir, "--batches", 1), "context")
    # the trainer's padded vocabulary is fine when the tokenizer is recorded and the same
    padded = _checkpoint(tmp_path, folder, "pad.pt", vocab_size=640)
    assert _cli(capsys, "eval", padded, "--data", data_dir, "--batches", 1)[0] == 0


def test_cli_process_bad_input_exit_code(tmp_path, data_dir):
    """As a user runs it: a real process exits 2 with one line on stderr and no traceback."""
    cmd = [sys.executable, "-m", "pi_lnfree.cli", "eval", str(tmp_path), "--data", str(data_dir), "--json"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
