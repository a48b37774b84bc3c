"""Writing a report: per-family tables (CSV + markdown), figures (PNG), report.md, report.csv.

Input: the `RunResult`s gathered by `pi_lnfree.report.gather`. Output folder layout::

    OUT/report.md                      tables + figure links + reasons for every "n/a"
    OUT/report.csv                     one row per run, every number of every table
    OUT/report.json                    the tables as records (what --json prints)
    OUT/tables/main-FAMILY.csv         quality, overload, measured cost, savings (the paper's form)
    OUT/tables/attention-FAMILY.csv    learned-attention check: uniform heads, entropy spread, verdict
    OUT/tables/predicted-FAMILY.csv    cost-model predictions at the model's context
    OUT/tables/operators-FAMILY.csv    per-operator bytes / WAN latency and their shares (measured)
    OUT/tables/operators-predicted-FAMILY.csv
    OUT/tables/phases-FAMILY.csv       offline and online phase costs (measured and predicted)
    OUT/tables/fidelity-FAMILY.csv     secure-eval settings and logit fidelity
    OUT/tables/cross-engine-FAMILY.csv measured cost and savings per profile side by side (only
                                       with several profiles, `--protocol` repeated)
    OUT/figures/*.png                  heatmaps, loss curves, entropy/slope dynamics, operator bars,
                                       cross-engine savings (several profiles)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from pi_lnfree import tables as tb
from pi_lnfree.attention_check import MOSTLY_UNIFORM_SHARE, UNIFORM_FRACTION
from pi_lnfree.files import atomic_write, write_json, write_text
from pi_lnfree.progress import console


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """`df` as CSV (no index column), written atomically."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False)


def slug(text: str) -> str:
    """A file-name-safe version of a family name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "family"


def family_tables(runs: list, profiles: list[tuple[str, str]] | None = None) -> dict[str, pd.DataFrame]:
    """The tables of one family, by kind: main, attention, predicted, operators,
    operators-predicted, phases, fidelity, and cross-engine when `profiles`
    (`ReportOptions.compared_profiles`) are given."""
    extra = {"cross-engine": tb.cross_engine_table(runs, profiles)} if profiles else {}
    return {
        "main": tb.main_table(runs, "secure"),
        "attention": tb.attention_table(runs),
        "predicted": tb.cost_table(runs, "cost"),
        "operators": tb.operator_table(runs, "secure"),
        "operators-predicted": tb.operator_table(runs, "cost"),
        "phases": tb.phase_table(runs),
        "fidelity": tb.fidelity_table(runs),
        **extra,
    }


def run_rows(families: dict[str, list], fam_tables: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """report.csv: one row per run with the main table's and the predicted table's numbers."""
    rows = []
    for fam, members in families.items():
        main, pred = fam_tables[fam]["main"], fam_tables[fam]["predicted"]
        for i, run in enumerate(members):
            row = {"family": fam, "run_dir": str(run.run_dir), "variant": run.variant}
            row.update(main.iloc[i].to_dict())
            row["eval loss"] = (run.pieces.get("eval") or {}).get("loss")
            row[tb.VERDICT] = (tb.attention_of(run) or {}).get("verdict")
            row.update({f"predicted {k}": v for k, v in pred.iloc[i].to_dict().items() if k != tb.CONFIG})
            row["missing"] = "; ".join(f"{k}: {v}" for k, v in run.missing.items())
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# figures


def _train_eval_series(run) -> tuple[list, list, list, list]:
    def finite(v):
        return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")

    train = [(r["step"], r["loss"]) for r in run.metrics if "loss" in r and finite(r["loss"])]
    ev = [(r["step"], r["eval_loss"]) for r in run.metrics if "eval_loss" in r and finite(r["eval_loss"])]
    return [s for s, _ in train], [v for _, v in train], [s for s, _ in ev], [v for _, v in ev]


def same_cost_groups(items: list[tuple[str, str, dict]]) -> list[tuple[str, dict]]:
    """Bars for an operator-cost figure: `items` are (run's label, its name in the tables, cost
    result); runs with the same label and the same bytes and WAN seconds in every category (seeds
    of one configuration under the cost model) become one bar named "LABEL (K runs)", in the order
    of first appearance. Anything else keeps its own bar and table name."""
    def key(label: str, res: dict) -> tuple:
        wan = res["network"]["wan"]["ops"]
        return (label, *((float(res["ops"][c]["bytes"]), float(wan[c])) for c in tb.CATEGORIES))

    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for label, name, res in items:
        groups.setdefault(key(label, res), []).append((name, res))
    return [(members[0][0] if len(members) == 1 else f"{k[0]} ({len(members)} runs)", members[0][1])
            for k, members in groups.items()]


def family_figures(fam: str, runs: list, names: list[str], folder: Path,
                   cross: pd.DataFrame | None = None) -> dict[str, str]:
    """Write the family's figures (with `cross`, the cross-engine table, also its savings bars);
    returns {figure kind: path, or "n/a: reason"}."""
    from pi_lnfree import plots

    out: dict[str, str] = {}
    s = slug(fam)

    def write(kind: str, have: list, why: str, draw) -> None:
        out[kind] = str(draw()) if have else f"n/a: {why}"

    ent = [(n, r.pieces["entropy"]) for n, r in zip(names, runs, strict=True) if r.pieces.get("entropy")]
    write("entropy heatmaps", ent, "no entropy results", lambda: plots.entropy_heatmaps_grid(
        [(f"{n}: overload {e['overload_fraction']:.0%}\nEmin/Emax {e['attention']['min_over_max']:.2f}, "
          f"uniform heads {e['attention']['uniform_share']:.0%}", e["entropy"], e["emax"]) for n, e in ent],
        folder / f"entropy-heatmaps-{s}.png", f"Headwise attention entropy, {fam} (scale: 0 to the causal maximum)",
        vmax=max(e["max_entropy"] for _, e in ent) if ent else None))

    curves = [(n, *_train_eval_series(r)) for n, r in zip(names, runs, strict=True) if r.metrics]
    write("loss curves", curves, "no metrics.jsonl", lambda: plots.loss_curves_figure(
        curves, folder / f"loss-curves-{s}.png", f"Loss curves, {fam}"))

    dyn = [(n, r.dynamics) for n, r in zip(names, runs, strict=True) if r.dynamics]
    write("entropy dynamics", dyn, "no entropy history in metrics.jsonl", lambda: plots.entropy_dynamics_grid(
        [(n, d["steps"], d["entropy_per_layer"]) for n, d in dyn], folder / f"entropy-dynamics-{s}.png",
        f"Headwise entropy per layer during training, {fam}"))

    slopes = [(n, d) for n, d in dyn if d["slopes"]]
    write("slope dynamics", slopes, "no run with learnable slopes", lambda: plots.slope_dynamics_figure(
        [(n, d["slope_steps"], d["slopes"], plots.slope_legend(d)) for n, d in slopes],
        folder / f"slope-dynamics-{s}.png", f"Learnable leaky-ReLU slopes during training, {fam}"))

    for piece, kind, what in (("secure", "operator costs", "measured by secure-eval"),
                              ("cost", "operator costs (predicted)", "predicted by the cost model")):
        results = [(r.label, n, r.pieces[piece]) for n, r in zip(names, runs, strict=True) if r.pieces.get(piece)]
        # predicted costs depend on the architecture only: one bar per configuration
        have = same_cost_groups(results) if piece == "cost" else [(n, res) for _, n, res in results]
        suffix = "" if piece == "secure" else "-predicted"
        write(kind, have, f"no {piece} results", lambda have=have, suffix=suffix, what=what: plots.operator_cost_bars(
            [n for n, _ in have], tb.CATEGORIES,
            [[res["ops"][c]["bytes"] for c in tb.CATEGORIES] for _, res in have],
            [[res["network"]["wan"]["ops"][c] for c in tb.CATEGORIES] for _, res in have],
            folder / f"operators{suffix}-{s}.png",
            f"Private-inference cost per operator, {fam}, {what} (T={have[0][1]['seq_len']})",
            "estimated WAN latency (s)"))
    if cross is not None:
        save_cols = [c for c in cross.columns if c.endswith(" comm savings (x)")]
        profiles = [c.removesuffix(" comm savings (x)") for c in save_cols]
        values = [[None if pd.isna(v) else float(v) for v in cross[c]] for c in save_cols]
        have = [v for col in values for v in col if v is not None]
        write("cross-engine savings", have, "no profile has a secure-eval result for the SM+LN+G baseline",
              lambda: plots.cross_engine_savings_bars(
                  list(cross[tb.CONFIG]), profiles, values, folder / f"cross-engine-{s}.png",
                  f"Communication saving vs {tb.BASELINE} per engine, {fam} (measured, "
                  f"T={_secure_len(runs)})"))
    return out


def _secure_len(runs: list) -> str:
    lens = sorted({res["seq_len"] for r in runs for k, res in r.pieces.items() if k.startswith("secure") and res})
    return ",".join(str(t) for t in lens) or "?"


# ---------------------------------------------------------------------------------------------
# report.md


def _parties(opts) -> str:
    """Who ran the secure-eval of the report's profile, in words."""
    from pi_lnfree.secure.profile import load_profile

    profile = load_profile(opts.protocol)
    if profile.engine == "crypten":
        return "two real CrypTen parties"
    return f"{profile.world_size} real SPU {profile.spu_protocol} parties"


def _settings_lines(opts, runs: list) -> list[str]:
    ev = "the whole validation split" if opts.eval_batches is None else \
        f"the first {opts.eval_batches} x {opts.eval_batch_size} validation sequences"
    en = "all validation sequences" if opts.entropy_batches is None else \
        f"the first {opts.entropy_batches} x {opts.entropy_batch_size} validation sequences"
    proto = Path(opts.protocol).name
    secure = "skipped" if opts.secure_seq_len == 0 else (
        f"`{proto}`, T={opts.secure_seq_len}, {opts.samples} validation sequence(s) per run, {_parties(opts)} "
        "on this machine; LAN/WAN latency = measured local compute + rounds x RTT + bytes / bandwidth "
        "(protocols/networks.toml)")
    if opts.compared_profiles():
        secure = (", ".join(f"`{Path(p).name}`" for p in opts.profiles()) + f", T={opts.secure_seq_len}, "
                  f"{opts.samples} validation sequence(s) per run, every party on this machine (the per-family "
                  f"tables use `{proto}`; the cross-engine table compares all); LAN/WAN latency = measured "
                  "local compute + rounds x RTT + bytes / bandwidth (protocols/networks.toml)")
    lens = ", ".join(str(t) for t in sorted({opts.cost_length(r.config) for r in runs}))
    cost = "skipped" if opts.cost_seq_len == 0 else (
        f"`{proto}` calibration, T={lens}" + (" (the model context)" if opts.cost_seq_len is None else "")
        + "; seconds estimated from the calibration machine's local compute")
    return [f"- eval PPL: exp(mean token cross-entropy) over {ev}",
            f"- overload: share of heads in the top band [3/4 Emax, Emax] of headwise entropy (Emax: the model's "
            f"largest head entropy), over {en}; entropy Emin/Emax: smallest / largest head entropy (near 1: every "
            "head at the same entropy, so 100% overload says nothing); uniform heads: entropy >= "
            f"{UNIFORM_FRACTION:.0%} of the largest possible; mean entropy (% of max): mean head entropy / the "
            "largest possible (uniform causal attention, `pi_lnfree.attention_check`)",
            f"- measured cost (secure-eval): {secure}",
            f"- predicted cost (cost model): {cost}",
            "- comm (GB): bytes both parties send for one forward pass of one sequence, / 1e9; "
            "savings (x) = SM+LN+G cost / this configuration's cost, within the family"]


def uniform_warning(runs: list) -> str | None:
    """The caveat printed next to a family's numbers when some of its runs have mostly uniform
    attention (None when every run with an entropy result has learned attention)."""
    flat = tb.mostly_uniform(runs)
    if not flat:
        return None
    names = ", ".join(n for n, r in zip(tb.configuration_names(runs), runs, strict=True)
                      if any(r is f for f in flat))
    advice = tb.attention_of(flat[0])["advice"]
    return (f"**Not meaningful yet:** {names}: at least {MOSTLY_UNIFORM_SHARE:.0%} of the heads have an entropy "
            f"within {1 - UNIFORM_FRACTION:.0%} of the causal maximum (uniform attention, see the learned-attention "
            "table). Their perplexity is that of a model that averages all earlier tokens, so comparing "
            "configurations on it says nothing about the paper's finding yet, and their overload fraction is near "
            "100% only because every head sits at the same entropy (Emin/Emax near 1), not because of entropic "
            f"overload. Budget needed: {advice}.")


def _share_markdown(long: pd.DataFrame, piece: str) -> str:
    if long.empty:
        return f"n/a: no run has {piece} results (reasons below)."
    return tb.to_markdown(tb.operator_share_wide(long))


def _main_markdown(main: pd.DataFrame) -> list[str]:
    """The main table's heading and text; without measured costs (no run has secure results),
    its cost columns would be n/a in every row, so they are left out and the heading says so."""
    cost = [c for c in tb.COST_COLUMNS if c in main.columns]
    if cost and main[cost].isna().all().all():
        return ["### Quality and entropy (no measured cost: the predicted cost is below)", "",
                tb.to_markdown(main.drop(columns=cost)), ""]
    return ["### Quality, entropy and measured private-inference cost", "", tb.to_markdown(main), ""]


def render_markdown(runs: list, fam_tables: dict, fam_figures: dict, opts, command: str, out: Path) -> str:
    """The report.md text."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# pi-lnfree report", "", f"Generated {when} by `{command}` from {len(runs)} run dir(s).", "",
             "## Settings", "", *_settings_lines(opts, runs), ""]
    families = tb.group_families(runs)
    for fam, members in families.items():
        t, figs = fam_tables[fam], fam_figures[fam]
        warning = uniform_warning(members)
        lines += [f"## {members[0].family_title}", "", *_main_markdown(t["main"]),
                  *([warning, ""] if warning else []),
                  "### Has attention been learned?", "", tb.to_markdown(t["attention"]), "",
                  "### Predicted private-inference cost (cost model)", "", tb.to_markdown(t["predicted"]), "",
                  "### Share of bytes and WAN latency per operator (measured)", "",
                  _share_markdown(t["operators"], "secure"), "",
                  "### Share of bytes and WAN latency per operator (predicted)", "",
                  _share_markdown(t["operators-predicted"], "cost"), "",
                  "### Offline and online phases (offline: before the client's input exists; the TTP dealer "
                  "is needed only then)", "", tb.to_markdown(t["phases"]), "",
                  "### Secure-eval fidelity (secure vs plaintext logits)", "", tb.to_markdown(t["fidelity"]), ""]
        if "cross-engine" in t:
            lines += ["### Cross-engine comparison (measured by secure-eval under each profile)", "",
                      "MB: bytes all parties send for one sequence / 1e6; rounds: CrypTen's communication calls, "
                      "SPU's send actions of the busiest party; comm savings (x) = SM+LN+G bytes / this "
                      "configuration's bytes under the same profile.", "", tb.to_markdown(t["cross-engine"]), ""]
        lines += ["### Figures", ""]
        for kind, path in figs.items():
            if path.startswith("n/a"):
                lines += [f"- {kind}: {path}", ""]
            else:
                lines += [f"**{kind}**", "", f"![{kind}]({Path(path).relative_to(out).as_posix()})", ""]
    lines += ["## Missing values (n/a) and their reasons", ""]
    reasons = [f"- `{r.run_dir}` ({r.label}): {piece}: {why}" for r in runs for piece, why in r.missing.items()]
    lines += reasons or ["- none"]
    lines += ["", "## Sources", ""]
    lines += [f"- `{r.run_dir}` ({r.label}, {r.variant}): " + ", ".join(
        f"{p} `{Path(f).name}`" for p, f in r.files.items()) for r in runs]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# everything


def write_outputs(runs: list, out: Path, opts, command: str, show: bool = True) -> dict[str, Any]:
    """Write every table, figure, report.md, report.csv and report.json under `out`; print the
    main tables with rich when `show`. Returns the summary (the --json object)."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    families = tb.group_families(runs)
    fam_tables: dict[str, dict[str, pd.DataFrame]] = {}
    fam_figures: dict[str, dict[str, str]] = {}
    files: list[str] = []
    records: dict[str, list] = {}
    for fam, members in families.items():
        fam_tables[fam] = family_tables(members, opts.compared_profiles())
        for kind, df in fam_tables[fam].items():
            path = out / "tables" / f"{kind}-{slug(fam)}.csv"
            write_csv(path, df)
            files.append(str(path))
            records[f"{kind}-{slug(fam)}"] = tb.to_records(df)
        fam_figures[fam] = family_figures(fam, members, tb.configuration_names(members), out / "figures",
                                          fam_tables[fam].get("cross-engine"))
        files += [p for p in fam_figures[fam].values() if not p.startswith("n/a")]
        if show:
            table = tb.to_rich(fam_tables[fam]["main"].rename(columns=tb.SHORT_NAMES), members[0].family_title)
            wide = console if console.is_terminal else Console(stderr=True, width=160)  # logs: don't squeeze
            wide.print(table)
            if "cross-engine" in fam_tables[fam]:
                cross = fam_tables[fam]["cross-engine"]
                wide.print(tb.to_rich(cross, f"Cross-engine: {members[0].family_title}",
                                      tb.cross_engine_headers(cross.columns)))
            warning = uniform_warning(members)
            if warning:
                wide.print(warning.replace("**", ""), highlight=False, soft_wrap=True)
    write_csv(out / "report.csv", run_rows(families, fam_tables))
    write_text(out / "report.md", render_markdown(runs, fam_tables, fam_figures, opts, command, out))
    summary = {
        "out": str(out),
        "report": str(out / "report.md"),
        "csv": str(out / "report.csv"),
        "files": [str(out / "report.md"), str(out / "report.csv"), *files],
        "figures": fam_figures,
        "tables": records,
        "missing": {str(r.run_dir): dict(r.missing) for r in runs},
    }
    write_json(out / "report.json", summary)
    return summary


def write_cost_tables(groups: list[list], md_path: Path, csv_path: Path, header: list[str]) -> pd.DataFrame:
    """Markdown + CSV of cost-model tables for several families (e.g. `report.preset_cost_runs`
    for GPT-2-small and Pythia-70M at two sequence lengths): per family, the cost table with
    savings vs SM+LN+G and the per-operator shares. Returns the combined long CSV table."""
    lines = list(header)
    frames = []
    for runs in groups:
        cost = tb.cost_table(runs, "cost")
        ops = tb.operator_table(runs, "cost")
        lines += [f"## {runs[0].family_title}", "", tb.to_markdown(cost), "",
                  "Share of bytes / WAN latency per operator (%):", "", _share_markdown(ops, "cost"), ""]
        frames.append(cost.assign(family=runs[0].family))
    table = pd.concat(frames, ignore_index=True)
    write_text(md_path, "\n".join(lines) + "\n")
    write_csv(csv_path, table)
    return table
