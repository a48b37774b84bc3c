"""`pi-lnfree report RUN_DIR... --out DIR`: tables and figures across trained runs.

For each run dir (a `pi-lnfree train` output: ckpt.pt, metrics.jsonl, recipe.toml) the report
gathers four results, each computed by its library function and cached as JSON in the run dir:

=====================================  =============================================================
RUN_DIR/eval.json                      `diagnostics.eval_checkpoint` (perplexity)
RUN_DIR/entropy.json                   `diagnostics.entropy_checkpoint` (headwise entropy, bands)
RUN_DIR/secure-PROTOCOL-T{T}.json      `secure.evaluate.secure_eval` (measured MPC cost, fidelity),
                                       one file per profile when several are compared
RUN_DIR/cost-PROTOCOL-T{T}.json        `secure.costmodel.predict` (predicted MPC cost)
=====================================  =============================================================

Each cache file is `{"format", "request", "result", "seconds"}`: `result` is exactly what the
library function returned, `request` the settings and the checkpoint it was computed for (file
name, sha256 and training step; for `cost`, also the sha256 of the profile's calibration file). A cache is reused only when its request equals the current one;
otherwise the piece is recomputed, or, with `compute=False`, reported as "n/a" with the reason.
A piece whose computation fails with a clear error (e.g. a variant not supported under MPC) is
also "n/a" with that error as the reason; the report lists every reason under its tables.

With several profiles (`--protocol` repeated), the first one is the report's profile (its
measured and predicted costs fill every per-family table); the secure-eval of every profile is
gathered as `RUN_DIR.pieces["secure@STEM"]` and compared in the cross-engine table. The cost
model covers every shipped profile, CrypTen and SPU alike (SPU CHEETAH's bytes and rounds are a
least-squares fit; the prediction says so).

The tables (`pi_lnfree.tables`) and figures (`pi_lnfree.plots`) are written by
`pi_lnfree.report_output`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pi_lnfree.errors import UserError
from pi_lnfree.progress import console
from pi_lnfree.resources import DEFAULT_PROTOCOL, protocol_file

CACHE_FORMAT = "pi-lnfree-report-cache/1"
PIECES = ("eval", "entropy", "secure", "cost")


@dataclass
class ReportOptions:
    """Settings of the results a report gathers (documented in `pi-lnfree report --help`)."""

    data: Path | None = None  # data folder for eval/entropy/secure tokens; default: the run's own
    compute: bool = True  # False: only read cached JSON, mark the rest n/a
    eval_batch_size: int = 16
    eval_batches: int | None = None  # None: the whole validation split
    entropy_batch_size: int = 16
    entropy_batches: int | None = 8
    protocol: str | Path = DEFAULT_PROTOCOL  # a profile TOML or a shipped profile's name
    compare: list[str | Path] = field(default_factory=list)  # more profiles: cross-engine table
    secure_seq_len: int = 32  # 0: no secure-eval
    samples: int = 1
    cost_seq_len: int | None = None  # None: the model's context; 0: no cost model
    timeout_s: float = 600.0

    def cost_length(self, config: Any) -> int:
        """Sequence length for the cost model of a model with `config`: `cost_seq_len`, or the
        model's context."""
        return self.cost_seq_len if self.cost_seq_len is not None else int(config.block_size)

    def validate(self) -> None:
        """UserError on settings that cannot work; resolves `protocol` to its file when a secure
        piece needs it."""
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
        if self.secure_seq_len or self.cost_seq_len != 0:
            self.protocol = protocol_file(self.protocol)
        if self.compare:
            if not self.secure_seq_len:
                raise UserError("comparing several --protocol profiles needs secure-eval (--secure-seq-len > 0)")
            self.compare = [protocol_file(p) for p in self.compare]
            stems = [Path(p).stem for p in self.profiles()]
            if len(set(stems)) != len(stems):
                raise UserError(f"a --protocol profile is given twice ({', '.join(stems)})")

    def profiles(self) -> list[str | Path]:
        """Every profile of the report: the report's own, then the compared ones."""
        return [self.protocol, *self.compare]

    def compared_profiles(self) -> list[tuple[str, str]]:
        """(profile name, `RunResult.pieces` key) of every profile when several are compared,
        else [] (one profile: no cross-engine table)."""
        if not self.compare:
            return []
        return [(Path(p).stem, secure_key(self, p)) for p in self.profiles()]


def secure_key(opts: ReportOptions, protocol: str | Path) -> str:
    """The `RunResult.pieces` key of `protocol`'s secure-eval: "secure" for the report's own
    profile, "secure@STEM" for a compared one."""
    stem = Path(protocol).stem
    return "secure" if stem == Path(opts.protocol).stem else f"secure@{stem}"


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
    from pi_lnfree.config import variant_name
    from pi_lnfree.objective import run_label

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
        variant=variant_name(cfg), label=run_label(cfg, train), config=cfg, data_dir=data_dir,
        identity={"file": ckpt_path.name, "sha256": _sha256(ckpt_path), "step": train.get("step")},
    )
    return run


# ---------------------------------------------------------------------------------------------
# the four pieces: cache file, request, computation


def _protocol_stem(opts: ReportOptions) -> str:
    return Path(opts.protocol).stem


def cache_name(piece: str, run: RunResult, opts: ReportOptions) -> str:
    """The JSON file of `piece` inside the run dir."""
    if piece in ("eval", "entropy"):
        return f"{piece}.json"
    seq = opts.secure_seq_len if piece == "secure" else opts.cost_length(run.config)
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
        req.update(protocol=_protocol_stem(opts), seq_len=opts.cost_length(run.config),
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
    if piece in ("eval", "entropy"):
        from pi_lnfree.batches import ShortValidationSplit
        from pi_lnfree.diagnostics import entropy_checkpoint, eval_checkpoint

        measure = eval_checkpoint if piece == "eval" else entropy_checkpoint
        size, batches = getattr(opts, f"{piece}_batch_size"), getattr(opts, f"{piece}_batches")
        try:
            return measure(ckpt, run.data_dir, size, batches, show_progress=True)
        except ShortValidationSplit as e:
            raise e.naming(f"--{piece}-batches", f"--{piece}-batch-size") from None
    if piece == "secure":
        from pi_lnfree.progress import progress
        from pi_lnfree.secure.crypten_compat import require_crypten
        from pi_lnfree.secure.evaluate import secure_eval
        from pi_lnfree.secure.profile import load_profile

        if load_profile(opts.protocol).engine == "crypten":
            require_crypten()
        data = run.data_dir if run.data_dir is not None and Path(run.data_dir).is_dir() else None
        with progress(transient=True) as bar:  # secure_eval reports nothing while the parties run
            bar.add_task(f"secure-eval T={opts.secure_seq_len} ({Path(opts.protocol).stem})", total=None)
            return secure_eval(ckpt, opts.protocol, seq_len=opts.secure_seq_len, samples=opts.samples,
                               data=data, timeout_s=opts.timeout_s)
    from pi_lnfree.secure.costmodel import predict
    from pi_lnfree.secure.profile import load_profile

    return predict(run.config, load_profile(opts.protocol), opts.cost_length(run.config), checkpoint=str(ckpt))


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
    from pi_lnfree.files import write_json

    write_json(path, {"format": CACHE_FORMAT, "request": request, "seconds": round(seconds, 3), "result": result})


def gather_piece(piece: str, run: RunResult, opts: ReportOptions, key: str | None = None) -> float:
    """Fill `run.pieces[key]` (default: `piece`) from its cache or by computing it; returns seconds
    spent computing. A reason for "n/a" goes to `run.missing[key]`."""
    key = key or piece
    run.pieces[key] = None
    skipped = skipped_reason(piece, run, opts)
    if skipped is not None:
        run.missing[key] = skipped
        return 0.0
    path = run.run_dir / cache_name(piece, run, opts)
    request = request_of(piece, run, opts)
    result, why = read_cache(path, request)
    if result is not None:
        if piece == "entropy" and "attention" not in result:  # a cache older than the learned-attention check
            from pi_lnfree.attention_check import check_of

            result = {**result, "attention": check_of(result)}
        run.pieces[key], run.files[key] = result, str(path)
        return 0.0
    if not opts.compute:
        run.missing[key] = f"--no-compute and {why}"
        return 0.0
    console.print(f"[bold]{run.name}[/bold]: computing {key} ({why})", highlight=False)
    t0 = time.perf_counter()
    try:
        result = compute_piece(piece, run, opts)
    except (UserError, ImportError) as e:
        reason = " ".join(str(e).split())
        run.missing[key] = f"{piece} failed: {reason}"
        console.print(f"[yellow]{run.name}: {key} is n/a: {reason}", highlight=False, soft_wrap=True)
        return time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    write_cache(path, request, result, seconds)
    run.pieces[key], run.files[key] = result, str(path)
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
        for protocol in opts.compare:
            gather_piece("secure", run, replace(opts, protocol=protocol, compare=[]), secure_key(opts, protocol))
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
