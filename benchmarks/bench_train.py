"""Training throughput on CPU: our trainer vs Hugging Face GPT2LMHeadModel + Trainer.

Same shape (cpu-small: 4 layers, 4 heads, d=128, GELU, LayerNorm, tied embeddings), same data
(the chunks of one data folder, 128 tokens -> 127 targets each), same batch, same optimizer
(fused AdamW, lr 1e-3, wd 0.1, eps 1e-8, clip 1.0, linear schedule with 5% warmup), fp32,
the same number of torch threads, in one process. Tokens/s counts trained target tokens (127 per
sequence for both; HF runs 128 positions to get them, as a Trainer user feeding whole chunks does).

The two are interleaved step by step: the HF Trainer runs its own loop, and a callback at the end
of each of its steps times one step of ours (`Trainer.step`, the loop body of `pi-lnfree train`)
and then one square fp32 matmul (the machine's peak at that moment). HF's step time runs from
the end of that matmul to the end of its next step, so it includes its data loading. Each
triple shares the machine's state, so on a machine whose speed drifts (a VM with noisy
neighbours) the per-step ratio and MFU stay meaningful; medians over the steps are reported.

Also measured: the matmul-only ceiling (the MFU a loop would reach if everything but the model's
matmuls took no time: each matmul shape's rate relative to a square matmul timed right next to
it) and the cost of entropy logging at the recipe's default interval relative to training time.

    .venv/bin/python benchmarks/bench_train.py [--data DIR] [--threads 2] [--steps 40] [--warmup 3]
    .venv/bin/python benchmarks/bench_train.py --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
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
SQUARE = 1024  # the square matmul whose rate stands for the machine's fp32 peak


def mm_rate(m: int, k: int, n: int, seconds: float) -> float:
    """FLOP/s of an (m, k) @ (k, n) fp32 torch.mm, timed for about `seconds`."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(2):
        a @ b
    reps, t0 = 0, now()
    while now() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (now() - t0)


def our_trainer(data: Path, batch: int, steps: int, threads: int, tmp: str):
    """Our Trainer on training/cpu.toml with this data and batch (progress bar off)."""
    from pi_lnfree.recipe import load_recipe
    from pi_lnfree.runtime import setup_runtime
    from pi_lnfree.train import Trainer

    recipe = load_recipe(str(RECIPE), [f"data.dir={json.dumps(str(data))}", f"train.batch_size={batch}",
                                       f"train.max_steps={steps}", "train.progress=false"])
    return Trainer(recipe, Path(tmp), setup_runtime("cpu", "fp32", threads), resume=False)


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, chunks: np.ndarray):
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        ids = torch.from_numpy(np.asarray(self.chunks[i], dtype=np.int64))
        return {"input_ids": ids, "labels": ids}


def paired_steps(data: Path, batch: int, steps: int, threads: int) -> dict:
    """Per-step seconds of HF Trainer and of ours, with the square-matmul peak between them."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from pi_lnfree.data import load_data_folder

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    folder = load_data_folder(data)
    cfg = GPT2Config(vocab_size=folder.vocab_size, n_positions=folder.seq_len, n_embd=128, n_layer=4, n_head=4,
                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    times: dict[str, list[float]] = {"hf": [], "ours": [], "peak": []}
    with tempfile.TemporaryDirectory() as ours_dir, tempfile.TemporaryDirectory() as hf_dir:
        ours = our_trainer(data, batch, steps, threads, ours_dir)
        resumed = [now()]

        class Interleave(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                times["hf"].append(now() - resumed[0])
                t0 = now()
                ours.step()
                ours.c.step += 1
                times["ours"].append(now() - t0)
                times["peak"].append(mm_rate(SQUARE, SQUARE, SQUARE, 0.15))
                resumed[0] = now()

        args = TrainingArguments(
            output_dir=hf_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-3,
            weight_decay=0.1, adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="linear",
            warmup_steps=max(1, round(0.05 * steps)), optim="adamw_torch_fused", logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        resumed[0] = now()
        hf_trainer = Trainer(model=model, args=args, train_dataset=_Chunks(folder.train), callbacks=[Interleave()])
        hf_trainer.remove_callback(PrinterCallback)  # its end-of-training dict would interleave with our output
        hf_trainer.train()
        # Entropy logging: one record on the fixed validation batch, timed over a few calls.
        e0 = now()
        for _ in range(3):
            ours.entropy_record()
        times["entropy_s"] = (now() - e0) / 3
        times["entropy_interval"] = ours.recipe["train.entropy_interval"]
        times["flops_per_token"] = ours.flops_token
        times["tokens_per_step"] = ours.tokens_per_step
        times["fused_adamw"] = bool(ours.optimizer.defaults.get("fused"))
    return times


def matmul_ceiling(data: Path, batch: int, threads: int, seconds: float = 0.2) -> dict:
    """The MFU a loop would reach if everything but the model's matmuls took no time at all.

    Every matmul shape one training step runs (each Linear's forward, input-gradient and
    weight-gradient products over batch x 127 rows; the LM head in the chunks `losses.py` uses)
    is timed next to the square matmul, giving its efficiency relative to the peak; attention
    FLOPs count at the peak. Skinny K=128 products and output-bound forwards run below the
    square's rate, so this is under 100% before any non-matmul work is counted.
    """
    from pi_lnfree.data import load_data_folder
    from pi_lnfree.losses import chunk_rows
    from pi_lnfree.model import GPT
    from pi_lnfree.recipe import load_recipe
    from pi_lnfree.runtime import flops_per_token

    torch.set_num_threads(threads)
    folder = load_data_folder(data)
    cfg = load_recipe(str(RECIPE), []).model_config(int(folder.vocab_size), int(folder.seq_len))
    model = GPT(cfg)
    positions = int(folder.seq_len) - 1
    rows = batch * positions
    shapes: dict[tuple[int, int, int], int] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        d_in, d_out = mod.in_features, mod.out_features
        # The LM head runs in chunks of rows (losses.linear_cross_entropy), the last one shorter.
        per = chunk_rows(d_out) if name == "lm_head" else rows
        blocks = [per] * (rows // per) + ([rows % per] if rows % per else [])
        for r in blocks:
            for shape in ((r, d_in, d_out), (r, d_out, d_in), (d_out, r, d_in)):
                shapes[shape] = shapes.get(shape, 0) + 1
    peak_seconds = 0.0  # the step's matmul time in units of "seconds at the square rate"
    matmul_flops = 0.0
    efficiency = {}
    for (m, k, n), times in shapes.items():
        rate = mm_rate(m, k, n, seconds)
        square = mm_rate(SQUARE, SQUARE, SQUARE, seconds)
        efficiency[f"{m}x{k}x{n}"] = rate / square
        matmul_flops += times * 2 * m * k * n
        peak_seconds += times * 2 * m * k * n / (rate / square)
    step_flops = flops_per_token(model, positions) * rows
    # What the model FLOPs hold beyond the Linear products is attention, counted at the peak.
    return {"ceiling_mfu": step_flops / (peak_seconds + step_flops - matmul_flops),
            "shape_efficiency": efficiency}


def summarize(t: dict, warmup: int) -> dict:
    """Medians over the steps after `warmup`: tokens/s, per-step ratio, MFU against the peak
    measured right after each of our steps."""
    hf, ours, peak = (np.asarray(t[k][warmup:]) for k in ("hf", "ours", "peak"))
    tokens = t["tokens_per_step"]
    ours_flops, hf_flops = t["flops_per_token"] * tokens, t["flops_per_token"] * tokens * 128 / 127
    median = lambda x: float(np.median(x))  # noqa: E731
    return {
        "steps_timed": len(ours),
        "ours_tokens_per_s": median(tokens / ours), "hf_tokens_per_s": median(tokens / hf),
        "ratio_median": median(hf / ours),
        "ratio_quartiles": [float(q) for q in np.quantile(hf / ours, [0.25, 0.75])],
        "peak_gflops_median": median(peak) / 1e9,
        "ours_mfu_median": median(ours_flops / ours / peak), "hf_mfu_median": median(hf_flops / hf / peak),
        "ours_step_s": median(ours), "hf_step_s": median(hf),
        "flops_per_token": t["flops_per_token"],
        "entropy_record_s": t["entropy_s"], "entropy_interval": t["entropy_interval"],
        "entropy_overhead": t["entropy_s"] / (t["entropy_interval"] * median(ours)),
        "fused_adamw": t["fused_adamw"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "stdlib-4096",
                    help="prepared data folder (made from the stdlib with vocab 4096 when missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3, help="paired steps left out of the medians")
    ap.add_argument("--steps", type=int, default=40, help="paired steps in all")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall seconds, or this process's CPU seconds (use with --threads 1 on a shared machine)")
    ap.add_argument("--json", type=Path, help="also write the results (with every step's times) here")
    a = ap.parse_args()
    global now
    now = CLOCK[a.clock]
    if a.clock == "cpu" and a.threads != 1:
        ap.error("--clock cpu needs --threads 1 (idle OpenMP threads spin and count as CPU time)")
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    if not (a.data / "manifest.json").exists():
        from pi_lnfree.data import prepare

        prepare(source="python-stdlib", out=a.data, vocab_size=4096)
    times = paired_steps(a.data, a.batch, a.steps, a.threads)
    result = {"threads": a.threads, "clock": a.clock, "batch": a.batch, "warmup": a.warmup,
              **summarize(times, a.warmup), **matmul_ceiling(a.data, a.batch, a.threads)}
    shown = {k: v for k, v in result.items() if k != "shape_efficiency"}
    print(json.dumps(shown, indent=1))
    if a.json:
        a.json.write_text(json.dumps({**result, "per_step": {k: times[k] for k in ("hf", "ours", "peak")}}, indent=1))


if __name__ == "__main__":
    main()
