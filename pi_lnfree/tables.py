"""Report tables: gathered run results -> pandas DataFrames -> markdown / CSV / rich.

Every function here is pure: it reads the result dicts of `pi_lnfree.report.RunResult` (the
JSON that `eval`, `entropy`, `secure-eval` and `cost` produce) and never computes a metric
itself. Missing values are None in the DataFrames and print as "n/a"; the reasons are listed by
the report next to the tables.

Definitions (the paper's form):

* "PPL vs SM+LN+G (%)" = 100 * (PPL / PPL of the SM+LN+G run of the same family - 1);
* "overload (% heads)" = share of heads in the top entropy band [3/4 Emax, Emax], Emax being the
  model's own largest head entropy (the paper's definition);
* "entropy Emin/Emax" = smallest / largest head entropy of the model: the spread that goes with
  the overload fraction (near 1: every head at the same entropy, so every head is "overloaded");
* "uniform heads (%)" = share of heads whose entropy is within the learned-attention check's margin
  of the causal maximum (`pi_lnfree.attention_check`: >= 98% of uniform causal attention's entropy);
  at 50% or more, the configuration comparison and the overload fraction are not meaningful yet;
* "mean entropy (% of max)" = mean headwise entropy over all heads, as a share of the largest
  possible (uniform causal attention): comparable across models, unlike the Emax-relative bands;
* "savings (x)" = baseline cost / this configuration's cost (bytes, LAN or WAN seconds), with
  the SM+LN+G run of the same family as the baseline (so the baseline itself shows 1.00x);
* "comm (GB)" = bytes sent by both parties together for one forward pass of one sequence, / 1e9.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

BASELINE = "SM+LN+G"
PAPER_ORDER = ("SM+LN+G", "SM+LN+R", "SM+G", "SM+R")
COST_PIECES = ("secure", "cost")  # measured (secure-eval) and predicted (cost model) costs
CATEGORIES = ("embedding", "linear", "attention", "softmax", "layernorm", "activation", "lm_head", "other")

CONFIG = "configuration"
PPL = "eval PPL"
PPL_VS = f"PPL vs {BASELINE} (%)"
OVERLOAD = "overload (% heads)"
SPREAD = "entropy Emin/Emax"
UNIFORM = "uniform heads (%)"
ENTROPY = "mean entropy (% of max)"
GB = "comm (GB)"
ROUNDS = "rounds"
LAN = "LAN (s)"
WAN = "WAN (s)"
SAVE_GB = "comm savings (x)"
SAVE_LAN = "LAN savings (x)"
SAVE_WAN = "WAN savings (x)"
COST_COLUMNS = (GB, ROUNDS, LAN, WAN, SAVE_GB, SAVE_LAN, SAVE_WAN)
MAIN_COLUMNS = (CONFIG, PPL, PPL_VS, OVERLOAD, SPREAD, UNIFORM, ENTROPY, *COST_COLUMNS)
VERDICT = "attention"
ATTENTION_COLUMNS = (CONFIG, UNIFORM, "uniform heads per layer (%)", "Emin (nats)", "Emax (nats)", SPREAD,
                     "std (nats)", VERDICT)

# Markdown / terminal formats per column (CSV keeps full precision).
FORMATS: dict[str, str] = {
    PPL: "{:.3f}", PPL_VS: "{:+.2f}", OVERLOAD: "{:.1f}", SPREAD: "{:.3f}", UNIFORM: "{:.1f}", ENTROPY: "{:.1f}",
    "Emin (nats)": "{:.3f}", "Emax (nats)": "{:.3f}", "std (nats)": "{:.3f}", GB: "{:.4g}", ROUNDS: "{:,.0f}",
    LAN: "{:.3g}", WAN: "{:.3g}", "local (s)": "{:.3g}", SAVE_GB: "{:.2f}x", SAVE_LAN: "{:.2f}x", SAVE_WAN: "{:.2f}x",
    "bytes (%)": "{:.1f}", "WAN (%)": "{:.1f}", "bytes": "{:,.0f}", "WAN seconds": "{:.3g}",
    "top-1 agreement": "{:.3f}", "max |logit error|": "{:.3g}", "mean |logit error|": "{:.3g}",
    "plain PPL": "{:.3f}", "secure PPL": "{:.3f}", "T": "{:d}", "samples": "{:d}",
}
NA = "n/a"
# Compact headers for the terminal (rich); files keep the full names.
SHORT_NAMES = {
    CONFIG: "config", PPL: "PPL", PPL_VS: "PPL vs base %", OVERLOAD: "overload %", SPREAD: "Emin/Emax",
    UNIFORM: "uniform %", ENTROPY: "H % max", GB: "GB",
    LAN: "LAN s", WAN: "WAN s", SAVE_GB: "GB x", SAVE_LAN: "LAN x", SAVE_WAN: "WAN x",
}


# ---------------------------------------------------------------------------------------------
# small numeric helpers


def savings(baseline: float | None, value: float | None) -> float | None:
    """baseline / value: how many times cheaper `value` is than the baseline (None if unknown)."""
    if baseline is None or value is None or value == 0:
        return None
    return float(baseline) / float(value)


def percent_vs(baseline: float | None, value: float | None) -> float | None:
    """100 * (value / baseline - 1) (None if unknown)."""
    if baseline is None or value is None or baseline == 0:
        return None
    return 100.0 * (float(value) / float(baseline) - 1.0)


def cost_summary(result: dict[str, Any] | None) -> dict[str, float | None]:
    """bytes, rounds, LAN and WAN seconds of one secure-eval / cost JSON (all None when absent)."""
    if not result:
        return {"bytes": None, "rounds": None, "lan": None, "wan": None}
    net = result.get("network") or {}
    return {
        "bytes": float(result["total"]["bytes"]),
        "rounds": float(result["total"]["rounds"]),
        "lan": float(net["lan"]["seconds"]) if "lan" in net else None,
        "wan": float(net["wan"]["seconds"]) if "wan" in net else None,
    }


def _get(d: dict[str, Any] | None, key: str) -> Any:
    return None if d is None else d.get(key)


def attention_of(run) -> dict[str, Any] | None:
    """The learned-attention check stored in a run's entropy result (None when absent)."""
    return _get(run.pieces.get("entropy"), "attention")


def mostly_uniform(runs: Sequence) -> list:
    """The runs whose attention check says their heads are mostly uniform."""
    return [r for r in runs if (attention_of(r) or {}).get("learned") is False]


# ---------------------------------------------------------------------------------------------
# ordering and families


def sort_runs(runs: Iterable) -> list:
    """Paper order (SM+LN+G, SM+LN+R, SM+G, SM+R), then other labels alphabetically, then run name."""
    def key(run):
        rank = PAPER_ORDER.index(run.label) if run.label in PAPER_ORDER else len(PAPER_ORDER)
        return (rank, run.label, run.name)
    return sorted(runs, key=key)


def group_families(runs: Iterable) -> dict[str, list]:
    """Runs grouped by model family (preset), families in first-seen order, runs in paper order."""
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(run.family, []).append(run)
    return {fam: sort_runs(members) for fam, members in groups.items()}


def configuration_names(runs: Sequence) -> list[str]:
    """Row names: the paper label, plus the run name when two runs of a family share a label."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    return [run.label if counts[run.label] == 1 else f"{run.label} [{run.name}]" for run in runs]


def baseline_run(runs: Sequence):
    """The family's SM+LN+G run (the first one when several), or None."""
    return next((r for r in runs if r.label == BASELINE), None)


# ---------------------------------------------------------------------------------------------
# tables


def _cost_columns(run, base, piece: str) -> dict[str, Any]:
    c = cost_summary(run.pieces.get(piece))
    b = cost_summary(base.pieces.get(piece)) if base is not None else cost_summary(None)
    return {
        GB: None if c["bytes"] is None else c["bytes"] / 1e9,
        ROUNDS: c["rounds"],
        LAN: c["lan"],
        WAN: c["wan"],
        SAVE_GB: savings(b["bytes"], c["bytes"]),
        SAVE_LAN: savings(b["lan"], c["lan"]),
        SAVE_WAN: savings(b["wan"], c["wan"]),
    }


def main_table(runs: Sequence, piece: str = "secure") -> pd.DataFrame:
    """The paper-form table of one family: quality, overload and the costs of `piece`
    ("secure": measured by secure-eval; "cost": predicted by the cost model)."""
    base = baseline_run(runs)
    base_ppl = _get(base.pieces.get("eval"), "ppl") if base is not None else None
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        ppl = _get(run.pieces.get("eval"), "ppl")
        overload = _get(run.pieces.get("entropy"), "overload_fraction")
        relative = _get(run.pieces.get("entropy"), "entropy_relative")
        check = attention_of(run)
        rows.append({
            CONFIG: name,
            PPL: ppl,
            PPL_VS: percent_vs(base_ppl, ppl),
            OVERLOAD: None if overload is None else 100.0 * overload,
            SPREAD: _get(check, "min_over_max"),
            UNIFORM: None if check is None else 100.0 * check["uniform_share"],
            ENTROPY: None if relative is None else 100.0 * float(np.mean(relative)),
            **_cost_columns(run, base, piece),
        })
    return pd.DataFrame(rows, columns=list(MAIN_COLUMNS))


def cross_engine_columns(profile: str) -> tuple[str, str, str, str]:
    """The cross-engine table's column names for one profile: MB, rounds, WAN seconds, saving."""
    return (f"{profile} MB", f"{profile} rounds", f"{profile} WAN (s)", f"{profile} comm savings (x)")


def cross_engine_headers(columns: Sequence[str]) -> list[str]:
    """Two-line terminal headers of a cross-engine table: the profile's name above its first
    column only ("spu-semi2k\\nMB", "\\nrounds", ...), so the table fits a terminal."""
    short = {" MB": "MB", " rounds": "rounds", " WAN (s)": "WAN s", " comm savings (x)": "comm x"}
    out = []
    for c in columns:
        end = next((e for e in short if str(c).endswith(e)), None)
        top = str(c).removesuffix(end) if end == " MB" else ""
        out.append(f"{top}\n{short[end]}" if end else "config")
    return out


def cross_engine_table(runs: Sequence, profiles: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """One row per configuration of a family; per profile, the measured secure-eval cost side by
    side: MB (bytes all parties send / 1e6), rounds, WAN seconds, and the communication saving vs
    the family's SM+LN+G run under the same profile (baseline bytes / these bytes).

    `profiles`: (profile name for the headers, `run.pieces` key of its secure-eval result).
    A missing result gives n/a cells (and n/a savings for every run when the baseline's is missing).
    """
    base = baseline_run(runs)
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        row: dict[str, Any] = {CONFIG: name}
        for profile, key in profiles:
            c = cost_summary(run.pieces.get(key))
            b = cost_summary(base.pieces.get(key)) if base is not None else cost_summary(None)
            mb, rounds, wan, save = cross_engine_columns(profile)
            row[mb] = None if c["bytes"] is None else c["bytes"] / 1e6
            row[rounds], row[wan], row[save] = c["rounds"], c["wan"], savings(b["bytes"], c["bytes"])
        rows.append(row)
    cols = [CONFIG, *(c for profile, _ in profiles for c in cross_engine_columns(profile))]
    return pd.DataFrame(rows, columns=cols)
def attention_table(runs: Sequence) -> pd.DataFrame:
    """Per configuration, the learned-attention check: uniform heads overall and per layer, the
    heads' entropy spread and the verdict (rows with no entropy result are n/a)."""
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        c = attention_of(run)
        per_layer = None if c is None else " / ".join(f"{100.0 * s:.0f}" for s in c["uniform_share_per_layer"])
        rows.append({
            CONFIG: name,
            UNIFORM: None if c is None else 100.0 * c["uniform_share"],
            "uniform heads per layer (%)": per_layer,
            "Emin (nats)": _get(c, "entropy_min"),
            "Emax (nats)": _get(c, "entropy_max"),
            SPREAD: _get(c, "min_over_max"),
            "std (nats)": _get(c, "entropy_std"),
            VERDICT: _get(c, "verdict"),
        })
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def cost_table(runs: Sequence, piece: str = "cost") -> pd.DataFrame:
    """Costs only (no quality columns): the cost model's predictions for one family."""
    base = baseline_run(runs)
    rows = [{CONFIG: name, **_cost_columns(run, base, piece)}
            for name, run in zip(configuration_names(runs), runs, strict=True)]
    return pd.DataFrame(rows, columns=[CONFIG, *COST_COLUMNS])


def operator_table(runs: Sequence, piece: str = "secure", network: str = "wan") -> pd.DataFrame:
    """Long table: per configuration and operator category, bytes, rounds and `network` latency,
    and each category's share (%) of the configuration's total bytes and latency."""
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        res = run.pieces.get(piece)
        if not res:
            continue
        ops = res["ops"]
        lat = (res.get("network") or {}).get(network, {}).get("ops", {})
        total_b = float(res["total"]["bytes"])
        total_s = sum(float(lat.get(c, 0.0)) for c in CATEGORIES)
        for cat in CATEGORIES:
            rec = ops.get(cat, {})
            b, s = float(rec.get("bytes", 0)), float(lat.get(cat, 0.0))
            rows.append({
                CONFIG: name, "category": cat, "bytes": b, "rounds": float(rec.get("rounds", 0)),
                "WAN seconds": s,
                "bytes (%)": 100.0 * b / total_b if total_b else None,
                "WAN (%)": 100.0 * s / total_s if total_s else None,
            })
    return pd.DataFrame(rows, columns=[CONFIG, "category", "bytes", "rounds", "WAN seconds", "bytes (%)", "WAN (%)"])


PHASE_COLUMNS = (CONFIG, "source", "phase", GB, ROUNDS, "local (s)", LAN, WAN)


def phase_table(runs: Sequence) -> pd.DataFrame:
    """Per configuration, measured (secure-eval) then predicted (cost model): the offline phase
    (input-independent preprocessing) and the online phase, GB on the wire, rounds, local
    seconds, LAN and WAN latency. Results without phases are left out."""
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        for piece, source in (("secure", "measured"), ("cost", "predicted")):
            phases = (run.pieces.get(piece) or {}).get("phases")
            for phase in ("offline", "online") if phases else ():
                ph = phases[phase]
                net = ph.get("network") or {}
                rows.append({
                    CONFIG: name, "source": source, "phase": phase, GB: float(ph["bytes"]) / 1e9,
                    ROUNDS: float(ph["rounds"]), "local (s)": ph["seconds"], LAN: net.get("lan"), WAN: net.get("wan"),
                })
    return pd.DataFrame(rows, columns=list(PHASE_COLUMNS))


def operator_share_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Categories as rows, one "bytes % / WAN %" column per configuration (for markdown)."""
    if long.empty:
        return pd.DataFrame(columns=["category"])
    cells: dict[str, dict[str, str]] = {}
    for _, r in long.iterrows():
        cells.setdefault(r[CONFIG], {})[r["category"]] = f"{_fmt(r['bytes (%)'], '{:.1f}')} / {_fmt(r['WAN (%)'], '{:.1f}')}"
    configs = list(dict.fromkeys(long[CONFIG]))
    rows = [{"category": cat, **{f"{c} (bytes % / WAN %)": cells[c].get(cat, NA) for c in configs}}
            for cat in CATEGORIES]
    return pd.DataFrame(rows)


def audit_summary(res: dict[str, Any] | None) -> str | None:
    """The range audit of a secure-eval result in a few words: "ok (min headroom 12%)", or the
    sites whose inputs are outside an approximation's valid range; None when not audited."""
    audit = (res or {}).get("audit")
    if not audit:
        return None
    bad = [c for c in audit["checks"] if not c["ok"]]
    if bad:
        return "OUT OF RANGE: " + "; ".join(f"{c['site']} {c['approximation']}" for c in bad)
    rooms = [c["headroom"] for c in audit["checks"] if c["headroom"] is not None]
    return f"ok (min headroom {100 * min(rooms):.0f}%)" if rooms else "ok"


def fidelity_table(runs: Sequence) -> pd.DataFrame:
    """Secure-eval settings, fidelity (secure vs plaintext logits) and the range audit per
    configuration."""
    rows = []
    for name, run in zip(configuration_names(runs), runs, strict=True):
        res = run.pieces.get("secure")
        fid = (res or {}).get("fidelity") or {}
        proto = (res or {}).get("protocol") or {}
        rows.append({
            CONFIG: name,
            "protocol": proto.get("name") if isinstance(proto, dict) else proto,
            "T": _get(res, "seq_len"),
            "samples": _get(res, "samples"),
            "top-1 agreement": fid.get("top1_agreement"),
            "max |logit error|": fid.get("max_abs_logit_error"),
            "mean |logit error|": fid.get("mean_abs_logit_error"),
            "plain PPL": fid.get("plain_ppl"),
            "secure PPL": fid.get("secure_ppl"),
            "range audit": audit_summary(res),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# rendering


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any, fmt: str | None) -> str:
    if _is_missing(value):
        return NA
    if fmt is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if fmt == "{:d}":
            return f"{int(value):d}"
        return fmt.format(value)
    return str(value)


SUFFIX_FORMATS = {" MB": "{:.2f}", " rounds": FORMATS[ROUNDS], " WAN (s)": FORMATS[WAN], " (x)": "{:.2f}x"}


def _suffix_format(column: str) -> str | None:
    """The format of a per-profile column ("spu-semi2k MB") by the end of its name."""
    return next((f for end, f in SUFFIX_FORMATS.items() if column.endswith(end)), None)


def formatted_rows(df: pd.DataFrame) -> list[list[str]]:
    """Cell strings of `df` with the report's number formats; missing values as "n/a"."""
    cols = list(df.columns)
    long_name = {short: full for full, short in SHORT_NAMES.items()}
    fmts = [FORMATS.get(c, FORMATS.get(long_name.get(c, ""), _suffix_format(str(c)))) for c in cols]
    return [[_fmt(row[c], f) for c, f in zip(cols, fmts, strict=True)] for _, row in df.iterrows()]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (numbers right-aligned)."""
    cols = [str(c) for c in df.columns]
    rows = formatted_rows(df)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---" if c in (CONFIG, "category", "protocol", "source", "phase", VERDICT) else "--:" for c in cols]
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_rich(df: pd.DataFrame, title: str, headers: Sequence[str] | None = None):
    """A rich Table of `df` for the terminal (`headers`: shown instead of the column names)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for c, h in zip(df.columns, headers or df.columns, strict=True):
        table.add_column(str(h), justify="left" if c in (CONFIG, "config", "category", "protocol") else "right",
                         no_wrap=True)
    for row in formatted_rows(df):
        table.add_row(*row)
    return table


def entropy_table(result: dict[str, Any]):
    """A rich Table of a `diagnostics.entropy_checkpoint` result, one row per layer: mean, min
    and max headwise entropy, the share of heads in each band of Emax and the share of uniform
    heads (entropy within the learned-attention check's margin of the causal maximum)
    (`pi-lnfree entropy`)."""
    from rich.table import Table

    bands = list(result["bands"])  # the band names, lowest first
    check = result["attention"]
    table = Table(title=f"headwise entropy (nats), {result.get('label', '')}: Emax {result['emax']:.3f}, "
                  f"max possible {result['max_entropy']:.3f}; share of heads per band of Emax; uniform: "
                  f">= {check['uniform_fraction']:.0%} of the max possible")
    table.add_column("layer", justify="right")
    for name in ("mean", "min", "max"):
        table.add_column(name, justify="right")
    for key in bands:
        table.add_column(f"{key}%", justify="right")
    table.add_column("uniform%", justify="right")
    rows = zip(result["entropy"], result["bands_per_layer"], check["uniform_share_per_layer"], strict=True)
    for i, (row, shares, uniform) in enumerate(rows):
        stats = [f"{f(row):.3f}" for f in (np.mean, np.min, np.max)]
        table.add_row(str(i), *stats, *(f"{shares[k]:.0%}" for k in bands), f"{uniform:.0%}")
    table.add_row("all", f"{np.mean(result['entropy']):.3f}", f"{np.min(result['entropy']):.3f}",
                  f"{result['emax']:.3f}", *(f"{result['bands'][k]:.0%}" for k in bands),
                  f"{check['uniform_share']:.0%}", end_section=True)
    return table


def entropy_summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines printed under the entropy table: overload with the heads' spread, and the
    learned-attention verdict (with the budget needed when attention is still uniform)."""
    from pi_lnfree.attention_check import summary_line

    check = result["attention"]
    lines = [f"overload fraction (top band): {result['overload_fraction']:.1%} of heads; entropy spread "
             f"Emin/Emax {check['min_over_max']:.3f}, std {check['entropy_std']:.3f} nats",
             summary_line(check)]
    if not check["learned"]:
        lines.append(f"not meaningful yet: {check['advice']}")
    return lines


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records (NaN -> None)."""
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if _is_missing(v) else (v.item() if hasattr(v, "item") else v)) for k, v in rec.items()})
    return out
