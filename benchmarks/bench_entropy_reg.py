"""Overhead of entropy regularization on a training step: regularized vs plain, same model.

The plain step runs the fused attention kernel (`scaled_dot_product_attention`) and never holds
the attention probabilities; the regularized step runs the explicit softmax (the probabilities
are kept for the backward pass and for the penalty) and adds the penalty and its gradient. Both
are `pi_lnfree.train.Trainer.step` on training/cpu.toml (cpu-small: 4 layers, 4 heads, d=128,
T=127, batch 32), built from the same seed, so they start from the same weights and read the same
batches. Steps alternate plain / regularized, so both see the same machine state; the ratio of the
per-pair times and its median are reported, with the load average before and after (on a shared
machine the absolute times move; the interleaved ratio is what carries over).

    .venv/bin/python benchmarks/bench_entropy_reg.py [--data DIR] [--threads 1] [--steps 30] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "cpu.toml"
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def make_trainer(data: Path, tmp: str, threads: int, extra: list[str]):
    from pi_lnfree.recipe import load_recipe
    from pi_lnfree.runtime import setup_runtime
    from pi_lnfree.train import Trainer

    sets = [f"data.dir={json.dumps(str(data))}", "train.max_steps=1000", "train.progress=false", *extra]
    return Trainer(load_recipe(str(RECIPE), sets), Path(tmp), setup_runtime("cpu", "fp32", threads), resume=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "stdlib-4096",
                    help="prepared data folder (made from the stdlib, vocab 4096, when missing)")
    ap.add_argument("--limit-mb", type=float, default=None, help="corpus cap when the folder must be prepared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="interleaved pairs in all")
    ap.add_argument("--warmup", type=int, default=3, help="pairs left out of the medians")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="cpu",
                    help="this process's CPU seconds (default; with --threads 1 what a quiet machine's wall "
                    "clock would show) or wall seconds")
    ap.add_argument("--per", choices=("query", "head"), default="query")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "entropy_reg_overhead.json")
    a = ap.parse_args()
    clock = CLOCK[a.clock]
    if not (a.data / "manifest.json").exists():
        from pi_lnfree.data import prepare

        prepare(source="python-stdlib", out=a.data, vocab_size=4096, seq_len=128, limit_mb=a.limit_mb)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        plain = make_trainer(a.data, d1, a.threads, [])
        reg = make_trainer(a.data, d2, a.threads, ["train.entropy_reg=1e-5", f"train.entropy_reg_per={a.per}"])
        assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), reg.model.parameters(), strict=True))
        pairs = []
        for i in range(a.steps):
            times = []
            for tr in (plain, reg):
                t0 = clock()
                tr.step()
                tr.c.step += 1
                times.append(clock() - t0)
            pairs.append(times)
            print(f"pair {i + 1}: plain {times[0]:.3f} s, regularized {times[1]:.3f} s, ratio {times[1] / times[0]:.3f}",
                  flush=True)
    load_after = os.getloadavg()
    kept = pairs[a.warmup:]
    ratios = [r / p for p, r in kept]
    result = {
        "what": "Trainer.step time, entropy-regularized (explicit softmax + penalty) / plain (fused SDPA), "
                "training/cpu.toml (cpu-small, batch 32 x 127 tokens, fp32)",
        "per": a.per, "threads": a.threads, "clock": a.clock, "pairs": len(kept), "warmup_pairs": a.warmup,
        "median_ratio": statistics.median(ratios),
        "ratio_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else None,
        "median_plain_s": statistics.median(p for p, _ in kept),
        "median_regularized_s": statistics.median(r for _, r in kept),
        "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count(),
        "torch": torch.__version__, "steps": pairs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"median ratio {result['median_ratio']:.3f} (quartiles {result['ratio_quartiles']}), "
          f"plain {result['median_plain_s']:.3f} s, regularized {result['median_regularized_s']:.3f} s; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs -> {a.out}")


if __name__ == "__main__":
    main()
