"""`pi-lnfree report RUN_DIR... --out DIR`: tables and figures across trained runs.

For each run dir (a `pi-lnfree train` output: ckpt.pt, metrics.jsonl, recipe.toml) the report
gathers four results, each computed by its library function and cached as JSON in the run dir:

=====================================  =============================================================
RUN_DIR/eval.json                      `diagnostics.eval_checkpoint` (perplexity)
RUN_DIR/entropy.json                   `diagnostics.entropy_checkpoint` (headwise entropy, bands)
RUN_DIR/secure-PROTOCOL-T{T}.json      `secure.evaluate.secure_eval` (measured MPC cost, fidelity)
RUN_DIR/cost-PROTOCOL-T{T}.json        `secure.costmodel.predict` (predicted MPC cost)
=====================================  =============================================================

Each cache file is `{"format", "request", "result", "seconds"}`: `result` is exactly what the
library function returned, `request` the settings and the checkpoint it was computed for (file
name, sha256 and training step; for `cost`, also the sha256 of the profile's calibration file). A cache is reused only when its request equals the current one;
otherwise the piece is recomputed, or, with `compute=False`, reported as "n/a" with the reason.
A piece whose computation fails with a clear error (e.g. a variant not supported under MPC) is
also "n/a" with that error as the reason; the report lists every reason under its tables.

The tables (`pi_lnfree.tables`) and figures (`pi_lnfree.plots`) are written by
`pi_lnfree.report_output`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pi_lnfree.errors import UserError
from pi_lnfree.progress import console

CACHE_FORMAT = "pi-lnfree-report-cache/1"
PIECES = ("eval", "entropy", "secure", "cost")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROTOCOL = REPO_ROOT / "protocols" / "crypten-2pc-ttp.toml"


@dataclass
class ReportOptions:
    """Settings of the results a report gathers (documented in `pi-lnfree report --help`)."""

    data: Path | None = None  # data folder for eval/entropy/secure tokens; default: the run's own
    compute: bool = True  # False: only read cached JSON, mark the rest n/a
    eval_batch_size: int = 16
    eval_batches: int | None = None  # None: the whole validation split
    entropy_batch_size: int = 16
    entropy_batches: int | None = 8
    protocol: Path = DEFAULT_PROTOCOL
    secure_seq_len: int = 32  # 0: no secure-eval
    samples: int = 1
    cost_seq_len: int | None = None  # None: the model's context; 0: no cost model
    timeout_s: float = 600.0

    def validate(self) -> None:
        """UserError on settings that cannot work."""
        for name in ("eval_batch_size", "entropy_batch_size", "samples"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_batches", "entropy_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.secure_seq_len < 0 or (self.cost_seq_len is not None and self.cost_seq_len < 0):
            raise UserError("sequence lengths must be positive (0 skips that piece)")
        if self.data is not None and not Path(self.data).is_dir():
            raise UserError(f"--data {self.data}: no such data folder")
        if (self.secure_seq_len or self.cost_seq_len != 0) and not Path(self.protocol).is_file():
            raise UserError(f"--protocol {self.protocol}: file not found")


@dataclass
class RunResult:
    """Everything the report knows about one run dir."""

    run_dir: Path
    name: str
    family: str
    family_title: str
    variant: str
    label: str
    config: Any  # ModelConfig
    data_dir: Path | None
    identity: dict[str, Any] = field(default_factory=dict)  # checkpoint file, sha256, step
    pieces: dict[str, dict | None] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # piece -> reason
    files: dict[str, str] = field(default_factory=dict)  # piece -> cache file
    metrics: list[dict] = field(default_factory=list)
    dynamics: dict | None = None


# ---------------------------------------------------------------------------------------------
# identity of a run


def _preset_of(cfg, meta: dict[str, Any]) -> str:
    from pi_lnfree.config import PRESETS

    if meta.get("preset"):
        return str(meta["preset"])
    for name, shape in PRESETS.items():
        if all(getattr(cfg, k) == v for k, v in shape.items() if k in ("n_layer", "n_head", "n_embd")):
            return name
    return f"custom-{cfg.n_layer}L-{cfg.n_head}H-d{cfg.n_embd}"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_run(run_dir: str | os.PathLike, data: Path | None = None) -> RunResult:
    """Read a run dir's checkpoint config and identity (no metric is computed)."""
    from pi_lnfree.checkpoint import config_from_checkpoint, load_checkpoint
    from pi_lnfree.config import variant_label, variant_name

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "ckpt.pt"
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    if not ckpt_path.is_file():
        raise UserError(f"{run_dir} is not a run dir: it has no ckpt.pt (train one with `pi-lnfree train`)")
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_checkpoint(ckpt, ckpt_path)
    meta = ckpt.get("meta") or {}
    train = ckpt.get("train") or {}
    preset = _preset_of(cfg, meta)
    recorded = meta.get("data_dir") or train.get("data_dir")
    data_dir = Path(data) if data is not None else (Path(recorded) if recorded else None)
    run = RunResult(
        run_dir=run_dir, name=run_dir.name, family=preset,
        family_title=f"{preset}: {cfg.n_layer} layers, {cfg.n_head} heads, d={cfg.n_embd}, "
                     f"context {cfg.block_size}, vocab {cfg.vocab_size:,}",
        variant=variant_name(cfg), label=variant_label(cfg), config=cfg, data_dir=data_dir,
        identity={"file": ckpt_path.name, "sha256": _sha256(ckpt_path), "step": train.get("step")},
    )
    return run


# ---------------------------------------------------------------------------------------------
# the four pieces: cache file, request, computation


def _protocol_stem(opts: ReportOptions) -> str:
    return Path(opts.protocol).stem


def cost_seq_len(run: RunResult, opts: ReportOptions) -> int:
    """Sequence length for the cost model: --cost-seq-len, or the model's context."""
    return opts.cost_seq_len if opts.cost_seq_len is not None else int(run.config.block_size)


def cache_name(piece: str, run: RunResult, opts: ReportOptions) -> str:
    """The JSON file of `piece` inside the run dir."""
    if piece in ("eval", "entropy"):
        return f"{piece}.json"
    seq = opts.secure_seq_len if piece == "secure" else cost_seq_len(run, opts)
    return f"{piece}-{_protocol_stem(opts)}-T{seq}.json"


def request_of(piece: str, run: RunResult, opts: ReportOptions) -> dict[str, Any]:
    """The settings a cached result must match to be reused."""
    req: dict[str, Any] = {"checkpoint": run.identity}
    data = str(Path(run.data_dir).resolve()) if run.data_dir is not None else None
    if piece == "eval":
        req.update(data=data, batch_size=opts.eval_batch_size, batches=opts.eval_batches)
    elif piece == "entropy":
        req.update(data=data, batch_size=opts.entropy_batch_size, batches=opts.entropy_batches)
    elif piece == "secure":
        req.update(protocol=_protocol_stem(opts), seq_len=opts.secure_seq_len, samples=opts.samples, data=data)
    else:
        from pi_lnfree.secure.costmodel import calibration_path

        cal = calibration_path(opts.protocol)
        req.update(protocol=_protocol_stem(opts), seq_len=cost_seq_len(run, opts),
                   calibration=_sha256(cal) if cal.is_file() else None)
    return req


def skipped_reason(piece: str, run: RunResult, opts: ReportOptions) -> str | None:
    """Why `piece` is not wanted at all for this run (None: it is wanted)."""
    if piece == "secure" and opts.secure_seq_len == 0:
        return "skipped (--secure-seq-len 0)"
    if piece == "cost" and opts.cost_seq_len == 0:
        return "skipped (--cost-seq-len 0)"
    return None


def compute_piece(piece: str, run: RunResult, opts: ReportOptions) -> dict[str, Any]:
    """Run the library function behind `piece` (raises UserError with a reason on failure)."""
    ckpt = run.run_dir / "ckpt.pt"
    needs_data = piece in ("eval", "entropy")
    if needs_data and (run.data_dir is None or not Path(run.data_dir).is_dir()):
        where = f" ({run.data_dir} not found)" if run.data_dir is not None else ""
        raise UserError(f"the run's data folder is unavailable{where}: give --data DIR")
    if piece == "eval":
        from pi_lnfree.diagnostics import eval_checkpoint

        return eval_checkpoint(ckpt, run.data_dir, opts.eval_batch_size, opts.eval_batches, show_progress=True)
    if piece == "entropy":
        from pi_lnfree.diagnostics import entropy_checkpoint

        return entropy_checkpoint(ckpt, run.data_dir, opts.entropy_batch_size, opts.entropy_batches,
                                  show_progress=True)
    if piece == "secure":
        from pi_lnfree.progress import progress
        from pi_lnfree.secure.evaluate import secure_eval

        data = run.data_dir if run.data_dir is not None and Path(run.data_dir).is_dir() else None
        with progress(transient=True) as bar:  # secure_eval reports nothing while the parties run
            bar.add_task(f"secure-eval T={opts.secure_seq_len} ({Path(opts.protocol).stem})", total=None)
            return secure_eval(ckpt, opts.protocol, seq_len=opts.secure_seq_len, samples=opts.samples,
                               data=data, timeout_s=opts.timeout_s)
    from pi_lnfree.secure.costmodel import predict
    from pi_lnfree.secure.profile import load_profile

    return predict(run.config, load_profile(opts.protocol), cost_seq_len(run, opts), checkpoint=str(ckpt))


def read_cache(path: Path, request: dict[str, Any]) -> tuple[dict | None, str | None]:
    """(result, None) when `path` holds a result for `request`; else (None, why not)."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"{path.name} is unreadable ({e})"
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("result"), dict):
        return None, f"{path.name} is not a report cache file"
    if doc.get("request") != request:
        old = doc.get("request") or {}
        diff = ", ".join(f"{k}: {old.get(k)!r} != {v!r}" for k, v in request.items() if old.get(k) != v)
        return None, f"{path.name} was computed with other settings ({diff})"
    return doc["result"], None


def write_cache(path: Path, request: dict[str, Any], result: dict[str, Any], seconds: float) -> None:
    """Write a cache file atomically."""
    from pi_lnfree.cli import _json_default

    doc = {"format": CACHE_FORMAT, "request": request, "seconds": round(seconds, 3), "result": result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def gather_piece(piece: str, run: RunResult, opts: ReportOptions) -> float:
    """Fill `run.pieces[piece]` from its cache or by computing it; returns seconds spent computing."""
    run.pieces[piece] = None
    skipped = skipped_reason(piece, run, opts)
    if skipped is not None:
        run.missing[piece] = skipped
        return 0.0
    path = run.run_dir / cache_name(piece, run, opts)
    request = request_of(piece, run, opts)
    result, why = read_cache(path, request)
    if result is not None:
        if piece == "entropy":  # a cache written before the learned-attention check existed
            from pi_lnfree.attention_check import check_of

            result = {**result, "attention": check_of(result)}
        run.pieces[piece], run.files[piece] = result, str(path)
        return 0.0
    if not opts.compute:
        run.missing[piece] = f"--no-compute and {why}"
        return 0.0
    console.print(f"[bold]{run.name}[/bold]: computing {piece} ({why})", highlight=False)
    t0 = time.perf_counter()
    try:
        result = compute_piece(piece, run, opts)
    except (UserError, ImportError) as e:
        reason = " ".join(str(e).split())
        run.missing[piece] = f"{piece} failed: {reason}"
        console.print(f"[yellow]{run.name}: {piece} is n/a: {reason}", highlight=False, soft_wrap=True)
        return time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    write_cache(path, request, result, seconds)
    run.pieces[piece], run.files[piece] = result, str(path)
    return seconds


def gather_history(run: RunResult) -> None:
    """metrics.jsonl records and the entropy/slope dynamics of a run (missing -> reasons)."""
    from pi_lnfree.diagnostics import read_metrics, run_dynamics

    try:
        run.metrics = read_metrics(run.run_dir)
    except UserError as e:
        run.missing["history"] = str(e)
        return
    try:
        run.dynamics = run_dynamics(run.run_dir)
    except UserError as e:
        run.missing["dynamics"] = str(e)


def gather(run_dirs: list[str | os.PathLike], opts: ReportOptions) -> list[RunResult]:
    """Open every run dir and gather its four results and history (see the module docstring)."""
    opts.validate()
    if not run_dirs:
        raise UserError("give at least one RUN_DIR")
    runs = [open_run(d, opts.data) for d in run_dirs]
    names = [str(r.run_dir.resolve()) for r in runs]
    if len(set(names)) != len(names):
        raise UserError("a run dir is given twice")
    _split_families_by_vocab(runs)
    for run in runs:
        for piece in PIECES:
            gather_piece(piece, run, opts)
        gather_history(run)
    return runs


def _split_families_by_vocab(runs: list[RunResult]) -> None:
    """Runs of one preset trained on different vocabularies are different families."""
    vocabs: dict[str, set[int]] = {}
    for run in runs:
        vocabs.setdefault(run.family, set()).add(int(run.config.vocab_size))
    for run in runs:
        if len(vocabs[run.family]) > 1:
            run.family = f"{run.family}-v{run.config.vocab_size}"


def make_report(run_dirs: list[str | os.PathLike], out: str | os.PathLike, opts: ReportOptions | None = None,
                command: str = "pi-lnfree report", show: bool = True) -> dict[str, Any]:
    """`pi-lnfree report`: gather every run's results (computing and caching what is missing
    unless `opts.compute` is False) and write the tables and figures under `out`.

    Returns the summary dict (`--json`): out, report, csv, files, figures, tables (records per
    table), missing (per run dir: piece -> reason).
    """
    from pi_lnfree.report_output import write_outputs

    opts = opts or ReportOptions()
    runs = gather(list(run_dirs), opts)
    return write_outputs(runs, Path(out), opts, command, show=show)


def preset_cost_runs(preset: str, variants: list[str], seq_len: int, protocol: str | os.PathLike,
                     vocab_size: int) -> list[RunResult]:
    """Cost-model predictions for paper-scale shapes without checkpoints: one pseudo-run per
    variant of `preset` (context `seq_len`, `vocab_size`), its `cost` piece filled by
    `secure.costmodel.predict`; the tables of `pi_lnfree.tables` apply unchanged."""
    from pi_lnfree.config import make_config, variant_label
    from pi_lnfree.secure.costmodel import predict
    from pi_lnfree.secure.profile import load_profile

    profile = load_profile(protocol)
    runs = []
    for v in variants:
        cfg = make_config(preset, v, vocab_size=vocab_size, block_size=seq_len)
        runs.append(RunResult(
            run_dir=Path(f"{preset}/{v}"), name=v, family=f"{preset}-T{seq_len}",
            family_title=f"{preset}: {cfg.n_layer} layers, {cfg.n_head} heads, d={cfg.n_embd}, T={seq_len}, "
                         f"vocab {vocab_size:,}",
            variant=v, label=variant_label(cfg), config=cfg, data_dir=None,
            pieces={"cost": predict(cfg, profile, seq_len)},
        ))
    return runs
