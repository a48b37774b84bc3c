"""Training throughput on CPU: our trainer vs Hugging Face GPT2LMHeadModel + Trainer.

Same shape (cpu-small: 4 layers, 4 heads, d=128, GELU, LayerNorm, tied embeddings), same data
(the chunks of one data folder, 128 tokens -> 127 targets each), same batch, same optimizer
(fused AdamW, lr 1e-3, wd 0.1, eps 1e-8, clip 1.0, linear schedule with 5% warmup), fp32,
the same number of torch threads, in one process, alternating: ours, HF, ours, HF, ...
Tokens/s counts trained target tokens (127 per sequence for both; HF runs 128 positions to get
them, as a Trainer user feeding whole chunks does).

Also measured here: the fp32 matmul peak of this machine (best of square torch.mm sizes), model
FLOPs utilization of both (6 x matmul weights + 12 x layers x T x d per token), and the cost of
entropy logging at the recipe's default interval relative to training time.

    .venv/bin/python benchmarks/bench_train.py [--data DIR] [--threads 2] [--rounds 3] [--steps 20]
    .venv/bin/python benchmarks/bench_train.py --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "cpu.toml"
# --clock cpu times this process's CPU seconds instead of wall seconds: with --threads 1 that is
# what a quiet machine's wall clock would show, when other jobs share the cores.
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
now = time.perf_counter


def matmul_peak(threads: int, seconds: float = 1.0, sizes=(256, 512, 1024, 2048)) -> dict:
    """Best fp32 FLOP/s of torch.mm over a few square sizes (each timed for ~`seconds`)."""
    torch.set_num_threads(threads)
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            torch.mm(a, b)
        reps, t0 = 0, now()
        while now() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        best[n] = 2 * n**3 * reps / (now() - t0)
    return {"peak_flops": max(best.values()), "by_size": {str(k): v for k, v in best.items()}}


def ours(data: Path, batch: int, warmup: int, steps: int, threads: int, compile: bool = False) -> dict:
    """Tokens/s of `Trainer.step` (the loop body of `pi-lnfree train`) after `warmup` steps."""
    import tempfile

    from pi_lnfree.config import load_recipe
    from pi_lnfree.runtime import setup_runtime
    from pi_lnfree.train import Trainer

    recipe = load_recipe(str(RECIPE), [f"data.dir={json.dumps(str(data))}", f"train.batch_size={batch}",
                                       f"train.max_steps={warmup + steps}", "train.progress=false",
                                       f"train.compile={'true' if compile else 'false'}"])
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(recipe, Path(tmp), setup_runtime("cpu", "fp32", threads), resume=False)
        for _ in range(warmup):
            tr.step()
            tr.c.step += 1
        t0 = now()
        for _ in range(steps):
            tr.step()
            tr.c.step += 1
        dt = now() - t0
        # Entropy logging: one record on the fixed validation batch, timed over a few calls.
        e0 = now()
        for _ in range(3):
            tr.entropy_record()
        entropy_s = (now() - e0) / 3
        return {
            "tokens_per_s": steps * tr.tokens_per_step / dt,
            "step_s": dt / steps,
            "flops_per_token": tr.flops_token,
            "entropy_s": entropy_s,
            "entropy_interval": recipe["train.entropy_interval"],
            "fused_adamw": bool(tr.optimizer.defaults.get("fused")),
            "parameters": tr.model.num_parameters(),
        }


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, chunks: np.ndarray):
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        ids = torch.from_numpy(np.asarray(self.chunks[i], dtype=np.int64))
        return {"input_ids": ids, "labels": ids}


def hf(data: Path, batch: int, warmup: int, steps: int, threads: int) -> dict:
    """Tokens/s of HF Trainer on GPT2LMHeadModel of the same shape, timed from step `warmup`."""
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from pi_lnfree.data import load_data_folder

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    folder = load_data_folder(data)
    cfg = GPT2Config(vocab_size=folder.vocab_size, n_positions=folder.seq_len, n_embd=128, n_layer=4, n_head=4,
                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(now())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=warmup + steps, learning_rate=1e-3,
            weight_decay=0.1, adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="linear",
            warmup_steps=max(1, round(0.05 * (warmup + steps))), optim="adamw_torch_fused", logging_strategy="no", save_strategy="no",
            report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        Trainer(model=model, args=args, train_dataset=_Chunks(folder.train), callbacks=[Clock()]).train()
    dt = stamps[-1] - stamps[warmup - 1]
    positions = folder.seq_len
    return {"tokens_per_s": steps * batch * (positions - 1) / dt, "step_s": dt / steps,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "stdlib-4096",
                    help="prepared data folder (made from the stdlib with vocab 4096 when missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall seconds, or this process's CPU seconds (use with --threads 1 on a shared machine)")
    ap.add_argument("--compile", action="store_true", help="also time our trainer with train.compile=true once")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    global now
    now = CLOCK[a.clock]
    if a.clock == "cpu" and a.threads != 1:
        ap.error("--clock cpu needs --threads 1 (idle OpenMP threads spin and count as CPU time)")
    if not (a.data / "manifest.json").exists():
        from pi_lnfree.data import prepare

        prepare(source="python-stdlib", out=a.data, vocab_size=4096)
    torch.set_num_threads(a.threads)
    peak = matmul_peak(a.threads)
    # HF computes 128 positions per 127 targets: its FLOPs per target token are ours x 128/127
    # (to within the attention term's T=128 vs 127, 0.1%).
    rounds = []
    for r in range(a.rounds):
        # The peak is re-measured every round (largest sizes only), so that MFU compares like with
        # like when other processes share the cores.
        p = matmul_peak(a.threads, 0.5, sizes=(1024, 2048))["peak_flops"]
        o = ours(a.data, a.batch, a.warmup, a.steps, a.threads)
        h = hf(a.data, a.batch, a.warmup, a.steps, a.threads)
        fpt = o["flops_per_token"]
        rounds.append({"ours": o, "hf": h, "ratio": o["tokens_per_s"] / h["tokens_per_s"], "peak_flops": p,
                       "ours_mfu": o["tokens_per_s"] * fpt / p, "hf_mfu": h["tokens_per_s"] * fpt * 128 / 127 / p})
        print(f"round {r + 1}: ours {o['tokens_per_s']:,.0f} tok/s, HF {h['tokens_per_s']:,.0f} tok/s, "
              f"ratio {rounds[-1]['ratio']:.3f}, peak {p / 1e9:.1f} GFLOP/s, MFU ours "
              f"{rounds[-1]['ours_mfu']:.1%} HF {rounds[-1]['hf_mfu']:.1%}", flush=True)
    fpt = rounds[0]["ours"]["flops_per_token"]
    ours_tps = statistics.median(r["ours"]["tokens_per_s"] for r in rounds)
    hf_tps = statistics.median(r["hf"]["tokens_per_s"] for r in rounds)
    step_s = statistics.median(r["ours"]["step_s"] for r in rounds)
    ent_s = statistics.median(r["ours"]["entropy_s"] for r in rounds)
    interval = rounds[0]["ours"]["entropy_interval"]
    result = {
        "threads": a.threads, "clock": a.clock, "batch": a.batch, "steps_per_round": a.steps, "rounds": rounds,
        "matmul_peak_gflops": peak["peak_flops"] / 1e9, "matmul_by_size_gflops": {
            k: v / 1e9 for k, v in peak["by_size"].items()},
        "ours_tokens_per_s": ours_tps, "hf_tokens_per_s": hf_tps,
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "ours_mfu_median": statistics.median(r["ours_mfu"] for r in rounds),
        "hf_mfu_median": statistics.median(r["hf_mfu"] for r in rounds),
        "flops_per_token": fpt,
        "entropy_record_s": ent_s, "entropy_interval": interval,
        "entropy_overhead": ent_s / (interval * step_s),
        "fused_adamw": rounds[0]["ours"]["fused_adamw"],
    }
    if a.compile:
        c = ours(a.data, a.batch, a.warmup, a.steps, a.threads, compile=True)
        result["ours_compiled_tokens_per_s"] = c["tokens_per_s"]
        result["ours_compiled_mfu"] = c["tokens_per_s"] * fpt / peak["peak_flops"]
        result["ours_compiled_vs_hf"] = c["tokens_per_s"] / hf_tps
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
