"""The training loop behind `pi-lnfree train`.

One optimizer step = `grad_accum` micro-batches of `batch_size` sequences per process; a data
chunk of seq_len tokens gives inputs chunk[:, :-1] and targets chunk[:, 1:]. Under torchrun
every process draws the same global batch (batch_size x world sequences, one sampler, one seed)
and trains on its own rows, so the data order does not depend on the number of processes.

After step s (numbered from 1): a train line every log_interval steps, an eval every
eval_interval steps (best.pt when the eval loss improves), headwise entropy and slopes every
entropy_interval steps (and at step 0) on a fixed validation batch, a checkpoint every
ckpt_interval steps; eval, entropy and checkpoint always happen at the last step.
A non-finite loss or gradient skips the step; max_nonfinite of them in a row stop the run with
the last good checkpoint kept. `--resume` restores model, optimizer, step counters (the learning
rate is a function of the step), sampler and RNG state: on CPU a resumed run ends bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pi_lnfree.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    load_initial_weights,
    save_checkpoint,
)
from pi_lnfree.config import variant_label, variant_name
from pi_lnfree.errors import UserError
from pi_lnfree.files import write_text
from pi_lnfree.ln_removal import RemovalSchedule, apply_schedule, check_removable, fold_frozen_norms
from pi_lnfree.model import GPT, param_groups
from pi_lnfree.objective import PART_KEYS, Objective, run_label
from pi_lnfree.progress import console
from pi_lnfree.recipe import TrainConfig, resume_differences
from pi_lnfree.runlog import MetricsLog
from pi_lnfree.runtime import (
    Runtime,
    all_reduce_sum,
    barrier,
    flops_per_token,
    peak_flops,
    rng_state,
    seed_everything,
    set_rng_state,
)
from pi_lnfree.schedule import LRSchedule


class TrainingStopped(UserError):
    """The run stopped itself (too many non-finite steps in a row); its last checkpoint is kept."""


@dataclass
class Counters:
    """Progress that a checkpoint must carry for an exact resume."""

    step: int = 0
    tokens: int = 0
    best_eval_loss: float = math.inf
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    loss_sum: float = 0.0  # finite step losses since the last train line
    loss_count: int = 0
    parts_sum: dict = field(default_factory=dict)  # objective parts since the last train line


def plan_steps(recipe: TrainConfig, n_train: int, seqs_per_step: int, positions: int) -> int:
    """Optimizer steps: train.max_steps, else the token budget, else train.epochs passes."""
    if recipe["train.max_steps"] > 0:
        return recipe["train.max_steps"]
    if recipe["train.max_tokens"] > 0:
        steps = recipe["train.max_tokens"] // (seqs_per_step * positions)
    else:
        steps = int(recipe["train.epochs"] * n_train) // seqs_per_step
    if steps < 1:
        raise UserError(
            f"the token budget / epochs give 0 steps at {seqs_per_step} sequences per step "
            f"({n_train} train sequences): set train.max_steps"
        )
    return steps


def make_optimizer(model: torch.nn.Module, recipe: TrainConfig, device: torch.device,
                   extra: list[torch.nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW over `param_groups` (no decay on biases, norm gains, slopes) plus `extra` parameters
    trained beside the model (no decay either); fused when possible."""
    o = recipe.section("optim")
    kwargs = dict(lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    groups = param_groups(model, o["weight_decay"])
    if extra:
        groups.append({"params": list(extra), "weight_decay": 0.0})
    if o["fused"] is False:
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError) as e:
        if o["fused"] is True:
            raise UserError(f"optim.fused = true, but fused AdamW is unavailable on {device}: {e}") from None
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


class Trainer:
    """One run: model, optimizer, schedule, sampler, counters and the run dir they live in."""

    def __init__(self, recipe: TrainConfig, run_dir: Path, rt: Runtime, resume: bool):
        from pi_lnfree.batches import RandomChunkSampler
        from pi_lnfree.data import load_data_folder

        self.recipe, self.run_dir, self.rt = recipe, Path(run_dir), rt
        t = recipe.section("train")
        self.t = t
        self.folder = load_data_folder(recipe["data.dir"])
        self.cfg = recipe.model_config(int(self.folder.vocab_size), int(self.folder.seq_len))
        self.positions = int(self.folder.seq_len) - 1
        self.seqs_per_step = t["batch_size"] * t["grad_accum"] * rt.world
        self.tokens_per_step = self.seqs_per_step * self.positions
        self.total_steps = plan_steps(recipe, len(self.folder.train), self.seqs_per_step, self.positions)
        self.removal = RemovalSchedule.from_recipe(recipe)
        if self.cfg.ln_removal and self.removal is None:
            raise UserError("model.ln_removal is set by the trainer during a LayerNorm removal (train.ln_remove_*)")
        if self.removal is not None:
            check_removable(self.cfg, self.removal, self.total_steps)
            self.cfg = self.cfg.replace(ln_removal=True)
        self.folded = False  # LayerNorm removal: the frozen norms were folded into the weights
        self.just_frozen: list[str] = []  # norms the last step froze

        seed_everything(t["seed"])
        self.model = GPT(self.cfg).to(rt.device)
        with torch.random.fork_rng(devices=[]):  # a teacher's construction must not shift the student's RNG
            self.objective = Objective(recipe, self.cfg, self.folder, self.positions, rt.device)
        self.optimizer = make_optimizer(self.model, recipe, rt.device, self.objective.extra_parameters)
        self.schedule = LRSchedule.from_recipe(recipe, self.total_steps)
        self.sampler = RandomChunkSampler(self.folder.train, t["batch_size"] * rt.world, t["seed"])
        self.scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
        self.c = Counters()
        self.resumed = False
        ckpt_path = self.run_dir / "ckpt.pt"
        if ckpt_path.exists() and not resume:
            raise UserError(f"{self.run_dir} already holds a run (ckpt.pt): pass --resume or choose a new --out")
        self.init_info = None
        if resume and ckpt_path.exists():
            self._restore(ckpt_path)
            self.resumed = True
        elif t["init_from"]:
            self.init_info = load_initial_weights(self.model, t["init_from"], self.folder)
        self.train_model = self._wrap(self.model)
        self.flops_token = flops_per_token(self.model, self.positions)
        self.peak = peak_flops(rt, t["peak_flops"])
        self.entropy_idx = self._entropy_batch()
        self.last: dict[str, Any] = {}

    # -- setup --------------------------------------------------------------------------------
    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        wrapped = torch.compile(model) if self.t["compile"] else model
        if self.rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    def _entropy_batch(self) -> torch.Tensor:
        """The fixed validation batch entropy is logged on: the first sequences, whole."""
        import numpy as np

        n = min(self.t["entropy_batch_size"], len(self.folder.valid))
        if n == 0:
            raise UserError("the data folder's validation split is empty")
        width = min(int(self.folder.seq_len), self.cfg.block_size)
        chunk = torch.as_tensor(np.asarray(self.folder.valid[:n], dtype=np.int64))[:, :width]
        return chunk.to(self.rt.device)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        state = ckpt["train"]
        saved = state.get("recipe") or {}
        diff = resume_differences(saved, self.recipe.values)
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {self.recipe.values.get(k)!r}" for k in diff[:4])
            raise UserError(f"--resume with a different recipe than {path} was trained with ({shown})")
        self.folded = bool(state.get("ln_folded"))
        stored = config_from_checkpoint(ckpt, path)
        # The recipe matched, so a different model is the folded one of a finished LayerNorm
        # removal, or one built under a model default that has changed since the run started:
        # either way the run continues the model the checkpoint holds.
        if stored != self.cfg:
            self.cfg = stored
            self.model = GPT(self.cfg).to(self.rt.device)
            self.optimizer = make_optimizer(self.model, self.recipe, self.rt.device, self.objective.extra_parameters)
        self.model.load_state_dict(ckpt["model"])
        if not self.folded:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.objective.load_state_dict(state, str(path))
        self.sampler.load_state_dict(state["sampler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.c = Counters(**state["counters"])

    # -- checkpoints --------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        return {
            "counters": asdict(self.c),
            "step": self.c.step,
            "tokens": self.c.tokens,
            "total_steps": self.total_steps,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "recipe": dict(self.recipe.values),
            "data_dir": self.recipe["data.dir"],
            "variant": variant_name(self.cfg),
            "ln_folded": self.folded,
            **self.objective.state_dict(),
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "variant": variant_name(self.cfg),
            "variant_label": variant_label(self.cfg),
            "preset": self.recipe["model.preset"],
            "data_dir": self.recipe["data.dir"],
            "tokenizer_sha256": getattr(self.folder, "tokenizer_sha256", None),
            "seq_len": int(self.folder.seq_len),
            **({"distilled_from": self.objective.teacher_info} if self.objective.teacher_info else {}),
            **({"init_from": self.recipe["train.init_from"]} if self.recipe["train.init_from"] else {}),
        }

    def save(self, name: str, with_optimizer: bool = True) -> None:
        """Write RUN_DIR/name atomically (rank 0 only)."""
        if not self.rt.is_main:
            return
        save_checkpoint(
            self.run_dir / name, self.model.state_dict(), self.cfg, train=self._train_state(),
            optimizer=self.optimizer.state_dict() if with_optimizer and not self.folded else None,
            meta=self._meta(),
        )

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> tuple[float, float, bool, dict[str, float]]:
        """One optimizer step over grad_accum micro-batches -> (CE loss, grad norm, applied, parts),
        parts: the objective's other terms (`pi_lnfree.objective`), means over the micro-batches."""
        from pi_lnfree.batches import to_device

        rt, t = self.rt, self.t
        if self.removal is not None:
            self.just_frozen = apply_schedule(self.model, self.removal, self.c.step + 1)
        lr = self.schedule.lr_at(self.c.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum, lo, hi = t["grad_accum"], rt.rank * t["batch_size"], (rt.rank + 1) * t["batch_size"]
        poison = (self.c.step + 1) in t["debug_nonfinite_steps"]
        loss_acc = torch.zeros((), device=rt.device)
        parts_acc = torch.zeros(len(PART_KEYS), device=rt.device)
        for micro in range(accum):
            batch = to_device(self.sampler.next_batch()[lo:hi], rt.device)
            sync = contextlib.nullcontext()
            if rt.distributed and micro < accum - 1:
                sync = self.train_model.no_sync()
            with sync:
                with rt.autocast():
                    objective, loss, parts = self.objective(self.train_model, batch[:, :-1], batch[:, 1:])
                if poison:
                    objective = objective * float("nan")
                scaled = objective / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_acc += loss.detach()
            parts_acc += torch.stack([parts[k].float() if k in parts else parts_acc.new_zeros(())
                                      for k in PART_KEYS])
            if poison:
                loss_acc += float("nan")
        params = [*self.model.parameters(), *self.objective.extra_parameters]
        for p in self.objective.extra_parameters:  # not inside DDP: average their gradients here
            if rt.distributed and p.grad is not None:
                p.grad.copy_(all_reduce_sum(p.grad, rt) / rt.world)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.recipe["optim.grad_clip"] or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        # Mean loss over ranks; the grad norm is the same on every rank (gradients are all-reduced).
        stats = all_reduce_sum(torch.cat([torch.stack([loss_acc / accum, grad_norm.float()]), parts_acc / accum]),
                               rt) / rt.world
        loss_v, gnorm_v, *part_values = stats.tolist()
        parts_v = {k: v for k, v in zip(PART_KEYS, part_values, strict=True) if self._has_part(k)}
        finite = (math.isfinite(loss_v) and all(math.isfinite(v) for v in parts_v.values())
                  and (self.scaler is not None or math.isfinite(gnorm_v)))
        if finite:
            if self.scaler is not None:  # the scaler itself skips steps whose fp16 grads overflowed
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_v, gnorm_v, finite, parts_v

    def _has_part(self, key: str) -> bool:
        o = self.objective
        return {"objective": not o.plain, "entropy_penalty": o.thresholds is not None,
                "distill_kl": o.teacher is not None}[key]

    def fold_norms(self) -> None:
        """LayerNorm removal, after the last step: fold every frozen norm into the weights."""
        self.model = fold_frozen_norms(self.model).train()
        self.cfg = self.model.config
        self.folded = True

    # -- periodic work ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        from pi_lnfree.diagnostics import evaluate

        bs = self.t["eval_batch_size"] or self.t["batch_size"]
        available = len(self.folder.valid) // bs  # eval_batches is capped by the validation split
        n = min(self.t["eval_batches"], available) if self.t["eval_batches"] and available else None
        self.model.eval()
        with self.rt.autocast():
            res = evaluate(self.model, self.folder, batch_size=bs, batches=n)
        self.model.train()
        return res

    def entropy_record(self) -> dict[str, Any]:
        from pi_lnfree.diagnostics import headwise_entropy

        with torch.no_grad():  # full precision: a few sequences, and bf16 probabilities would blur eq. 8
            ent = headwise_entropy(self.model, self.entropy_idx)
        return {"entropy": ent.tolist(), "slopes": self.model.slope_values(), **self.objective.record()}

    def due(self, interval: int) -> bool:
        return self.c.step == self.total_steps or (interval > 0 and self.c.step % interval == 0)


def _extras_lines(tr: Trainer) -> list[str]:
    """What the run adds to plain training, one line each, for the start message."""
    lines = []
    if tr.init_info is not None:
        differs = f" (differs from the recipe's model in {', '.join(tr.init_info['differs'])})" \
            if tr.init_info["differs"] else ""
        lines.append(f"  weights from {tr.init_info['path']} ({tr.init_info['variant']}){differs}")
    lines += tr.objective.describe()
    if tr.removal is not None:
        r = tr.removal
        lines.append(f"  LayerNorm removal: MLP norms freeze from step {r.mlp}, attention norms from {r.attn}, "
                     f"final norm at {r.final} (gap {r.gap}); folded after step {tr.total_steps}")
    return lines


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else str(x)


def ensure_data(recipe: TrainConfig) -> None:
    """Prepare data.dir from data.source when it holds no prepared folder yet."""
    d = recipe.section("data")
    if not d["source"] or (Path(d["dir"]) / "manifest.json").exists():
        return
    from pi_lnfree.data import prepare

    console.print(f"preparing {d['dir']} from {d['source']} (data.source in the recipe)", highlight=False)
    prepare(source=d["source"], out=Path(d["dir"]), vocab_size=d["vocab_size"] or None,
            tokenizer=d["tokenizer"] or None, seq_len=d["seq_len"], valid_fraction=d["valid_fraction"],
            limit_mb=d["limit_mb"] or None, text_column=d["text_column"])


def run_training(recipe: TrainConfig, run_dir: Path, rt: Runtime, resume: bool = False) -> dict[str, Any]:
    """Train one run into `run_dir` (resuming from its ckpt.pt when `resume`).

    Returns a summary: run_dir, variant, label, steps, tokens, final_loss (last logged train
    loss), eval_loss, eval_ppl, best_eval_loss, nonfinite_steps, slopes, seconds, tokens_per_s
    (this session's training steps only), parameters.
    """
    from rich.progress import TextColumn

    from pi_lnfree.progress import progress

    run_dir = Path(run_dir)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ensure_data(recipe)
    barrier(rt)
    tr = Trainer(recipe, run_dir, rt, resume)
    t, c = tr.t, tr.c
    if rt.is_main:
        write_text(run_dir / "recipe.toml", recipe.to_toml())
        for stale in run_dir.glob(".*.pt.*.tmp"):  # left by a kill during a save
            stale.unlink()
    keep = c.step if tr.resumed else -1  # a fresh start drops the history of a run killed before its first save
    log = MetricsLog(run_dir, keep_until_step=keep, tensorboard=t["tensorboard"]) if rt.is_main else None
    write = log.write if log is not None else (lambda rec: None)
    if log is not None:
        tr.last.update(log.latest)
    label = f"{variant_label(tr.cfg)} ({variant_name(tr.cfg)})"
    if rt.is_main:
        what = f"resuming at step {c.step}" if c.step else "training"
        console.print(
            f"{what} {label} {recipe['model.preset']}: {tr.model.num_parameters():,} parameters, "
            f"{tr.total_steps} steps x {tr.tokens_per_step:,} tokens, {rt.device} {rt.precision} -> {run_dir}",
            highlight=False,
        )
        for line in _extras_lines(tr):
            console.print(line, highlight=False, soft_wrap=True)
    if c.step == 0 and t["entropy_interval"] > 0 and rt.is_main:
        write({"step": 0, "tokens": 0, **tr.entropy_record()})

    train_seconds, session_tokens, span_tokens, span_seconds = 0.0, 0, 0, 0.0
    bar = progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"))
    show = t["progress"] and rt.is_main
    started = time.perf_counter()
    try:
        with bar if show else contextlib.nullcontext():
            task = bar.add_task(variant_name(tr.cfg), total=tr.total_steps, completed=c.step, loss="-", tps="-")
            while c.step < tr.total_steps:
                t0 = time.perf_counter()
                loss, gnorm, applied, parts = tr.step()
                dt = time.perf_counter() - t0
                c.step += 1
                c.tokens += tr.tokens_per_step
                if tr.just_frozen:
                    write({"step": c.step, "tokens": c.tokens, "ln_frozen": tr.just_frozen})
                train_seconds += dt
                session_tokens += tr.tokens_per_step
                span_tokens += tr.tokens_per_step
                span_seconds += dt
                if applied:
                    c.nonfinite_in_a_row = 0
                    c.loss_sum += loss
                    c.loss_count += 1
                    for k, v in parts.items():
                        c.parts_sum[k] = c.parts_sum.get(k, 0.0) + v
                else:
                    c.nonfinite_total += 1
                    c.nonfinite_in_a_row += 1
                    if c.nonfinite_in_a_row >= t["max_nonfinite"]:
                        write({"step": c.step, "tokens": c.tokens, "loss": loss, "grad_norm": gnorm,
                               "nonfinite": c.nonfinite_total, "stopped": "nonfinite"})
                        kept = load_checkpoint(run_dir / "ckpt.pt")["train"]["step"] if (
                            run_dir / "ckpt.pt").exists() else None
                        where = f"last good checkpoint kept: {run_dir / 'ckpt.pt'} (step {kept})" if kept is not None \
                            else "no checkpoint was written yet"
                        raise TrainingStopped(
                            f"training stopped at step {c.step}: {c.nonfinite_in_a_row} non-finite losses or "
                            f"gradients in a row (train.max_nonfinite = {t['max_nonfinite']}); {where}; "
                            "lower optim.lr or raise schedule warmup"
                        )
                if tr.due(t["log_interval"]):
                    avg = c.loss_sum / c.loss_count if c.loss_count else math.nan
                    tps = span_tokens / span_seconds if span_seconds > 0 else 0.0
                    rec = {"step": c.step, "tokens": c.tokens, "loss": avg, "lr": tr.schedule.lr_at(c.step - 1),
                           "grad_norm": gnorm, "tokens_per_s": tps, "nonfinite": c.nonfinite_total}
                    if tr.peak:
                        rec["mfu"] = tps * tr.flops_token / tr.peak
                    rec.update({k: v / c.loss_count for k, v in c.parts_sum.items()} if c.loss_count else {})
                    write(rec)
                    tr.last.update(loss=avg)
                    c.loss_sum, c.loss_count, c.parts_sum, span_tokens, span_seconds = 0.0, 0, {}, 0, 0.0
                    bar.update(task, loss=_fmt(avg), tps=f"{tps:,.0f}")
                if c.step == tr.total_steps and tr.removal is not None and not tr.folded:
                    tr.fold_norms()
                    if rt.is_main:
                        write({"step": c.step, "tokens": c.tokens, "ln_folded": True, "variant": variant_name(tr.cfg),
                               "variant_label": variant_label(tr.cfg)})
                if tr.due(t["eval_interval"]):
                    res = tr.evaluate() if rt.is_main else None
                    if res is not None:
                        write({"step": c.step, "tokens": c.tokens, "eval_loss": res["loss"], "eval_ppl": res["ppl"]})
                        tr.last.update(eval_loss=res["loss"], eval_ppl=res["ppl"])
                        if res["loss"] < c.best_eval_loss:
                            c.best_eval_loss = res["loss"]
                            tr.save("best.pt", with_optimizer=False)
                if t["entropy_interval"] > 0 and tr.due(t["entropy_interval"]) and rt.is_main:
                    write({"step": c.step, "tokens": c.tokens, **tr.entropy_record()})
                if tr.due(t["ckpt_interval"]):
                    tr.save("ckpt.pt")
                barrier(rt)
                bar.update(task, completed=c.step)
    finally:
        if log is not None:
            log.close()
    return {
        "run_dir": str(run_dir),
        "variant": variant_name(tr.cfg),
        "label": run_label(tr.cfg, {"recipe": recipe.values, **tr.objective.state_dict()}),
        "steps": c.step,
        "tokens": c.tokens,
        "final_loss": tr.last.get("loss"),
        "eval_loss": tr.last.get("eval_loss"),
        "eval_ppl": tr.last.get("eval_ppl"),
        "best_eval_loss": c.best_eval_loss if math.isfinite(c.best_eval_loss) else None,
        "nonfinite_steps": c.nonfinite_total,
        "slopes": tr.model.slope_values(),
        "seconds": time.perf_counter() - started,
        "tokens_per_s": session_tokens / train_seconds if train_seconds > 0 else None,
        "parameters": tr.model.num_parameters(),
    }
