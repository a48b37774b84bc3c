"""GPT-2-small (12 layers, 12 heads, d=768, vocabulary 52,000, T=128) under SPU's SEMI2K and
CHEETAH: SM+LN+G, SM+LN+R, SM+G and SM+R, measured per operator and assembled per model, next to
the published SecretFlow numbers and CrypTen's.

A whole GPT-2-small under CHEETAH takes hours on 2 cores, so the model is assembled from parts
that are measured with real SPU parties (`secure_eval` with an SPU profile):

* `measure --protocol P`: for each variant, a one-layer GPT-2-small-shaped checkpoint (random
  weights, `secure_block.make_block_checkpoint`) with a different vocabulary per variant
  (`--probe-vocabs`, default 512, 2048, 4096, 8192; under CHEETAH each party of a one-layer run
  needs about 10 GB at V=512 and 12 GB at V=2,048, so on a 24 GB machine with nothing else
  running its probes stop at 2,048: `--probe-vocabs 512,2048,1024,768`). Each run gives that variant's block (linear,
  attention, softmax, activation, the block's norms) and, because the four vocabularies differ, a
  point on the line bytes(V) of the embedding (client's one-hot tokens x server's table) and of
  the LM head, which do not depend on the variant.
* `measure --protocol P --full`: the whole 12-layer model at vocabulary 52,000, directly (SEMI2K
  only takes minutes); the check of the assembly.
* `report`: per protocol and variant, model = embedding(52,000) + 12 x block + the norm sites
  (each norm costs the same: per-site cost from the one-layer run) + LM head(52,000), with the
  embedding and LM head from a least-squares line in V through the four probes; writes
  `benchmarks/results/spu_gpt2.md` and `.json`, with the assembled-vs-measured error where a full
  run exists, and the CrypTen cost model's prediction for the same models.

Every run is saved as `benchmarks/results/spu_gpt2/PROTOCOL-VARIANT-L{layers}-V{vocab}.json`
(with the command, date, load average and CPU flags) and skipped when present, so the runs can be
spread over several sittings. Bytes and rounds are exact and machine-independent; seconds are
this machine's.

    .venv/bin/python benchmarks/spu_gpt2.py measure --protocol spu-semi2k [--full] [--variants ...]
    .venv/bin/python benchmarks/spu_gpt2.py measure --protocol spu-cheetah
    .venv/bin/python benchmarks/spu_gpt2.py report
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from secure_block import make_block_checkpoint  # noqa: E402

from pi_lnfree.config import make_config, variant_label  # noqa: E402
from pi_lnfree.files import write_json, write_text  # noqa: E402
from pi_lnfree.secure.meter import CATEGORIES, network_estimate  # noqa: E402
from pi_lnfree.secure.profile import load_networks  # noqa: E402

VARIANTS = ("sm-ln-g", "sm-ln-r", "sm-g", "sm-r")
N_LAYER, VOCAB, SEQ_LEN = 12, 52_000, 128
RUNS = ROOT / "benchmarks" / "results" / "spu_gpt2"
PUBLISHED = {"sm-ln-g": (25.32, 8.21), "sm-ln-r": (9.44, 6.06)}  # GB, minutes: SecretFlow 2PC, WAN
BLOCK_CATS = ("linear", "attention", "softmax", "activation", "other")
VOCAB_CATS = ("embedding", "lm_head")
FIELDS = ("bytes", "rounds", "seconds")
MIXED = "assembled, embedding and LM head measured"  # blocks from the probe, vocabulary parts from a whole model


def machine() -> dict:
    """Date, load average and CPU flags relevant to int64/fp32 kernels, for the run's record."""
    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "fma", "bmi")))
                break
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "machine": platform.machine(), "cpu_flags": flags}


def run_path(protocol: str, variant: str, n_layer: int, vocab: int) -> Path:
    return RUNS / f"{protocol}-{variant}-L{n_layer}-V{vocab}.json"


def measure(args) -> None:
    from pi_lnfree.secure.evaluate import secure_eval

    protocol = Path(args.protocol).stem
    vocabs = [int(v) for v in args.probe_vocabs.split(",")]
    jobs = ([(v, N_LAYER, VOCAB) for v in args.variants.split(",")] if args.full
            else [(v, 1, vocabs[VARIANTS.index(v) % len(vocabs)]) for v in args.variants.split(",")])
    RUNS.mkdir(parents=True, exist_ok=True)
    for variant, n_layer, vocab in jobs:
        out = run_path(protocol, variant, n_layer, vocab)
        if out.exists():
            print(f"{out.name}: present, skipped", file=sys.stderr)
            continue
        before = machine()
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / f"{variant}.pt"
            make_block_checkpoint(variant, vocab, ckpt, n_layer=n_layer)
            r = secure_eval(ckpt, args.protocol, seq_len=SEQ_LEN, samples=1, timeout_s=args.timeout)
        r["run"] = {"variant": variant, "n_layer": n_layer, "vocab": vocab, "protocol": protocol,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "before": before, "after": machine()}
        write_json(out, r)
        print(f"{out.name}: {r['total']['bytes'] / 1e6:,.1f} MB, {r['total']['rounds']:,.0f} rounds, "
              f"{r['wall_seconds']:.0f} s wall", file=sys.stderr)


def norm_sites(variant: str, n_layer: int) -> int:
    """Norm calls of one forward: two per block unless the variant drops them, plus the final one."""
    cfg = make_config("gpt2-small", variant, n_layer=n_layer)
    return (2 * n_layer if cfg.norm != "none" else 0) + int(cfg.final_norm)


def vocab_lines(runs: list[dict]) -> dict:
    """Least-squares lines f(V) = a + b V of the embedding's and LM head's bytes, rounds and
    seconds through the one-layer probes, and the largest relative residual of each."""
    V = np.array([r["run"]["vocab"] for r in runs], dtype=float)
    A = np.stack([np.ones_like(V), V], axis=1)
    lines = {}
    for c in VOCAB_CATS:
        for f in FIELDS:
            y = np.array([r["ops"][c][f] for r in runs], dtype=float)
            (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
            resid = np.abs(A @ np.array([a, b]) - y) / np.maximum(np.abs(y), 1e-12)
            lines[(c, f)] = {"a": float(a), "b": float(b), "max_rel_residual": float(resid.max())}
    return lines


def assemble(block: dict, lines: dict, variant: str) -> dict:
    """Per-category cost of the whole model from its one-layer run and the vocabulary lines."""
    ops = {}
    for c in CATEGORIES:
        if c in VOCAB_CATS:
            ops[c] = {f: lines[(c, f)]["a"] + lines[(c, f)]["b"] * VOCAB for f in FIELDS}
        elif c == "layernorm":
            per_site = {f: block["ops"][c][f] / max(norm_sites(variant, 1), 1) for f in FIELDS}
            ops[c] = {f: per_site[f] * norm_sites(variant, N_LAYER) for f in FIELDS}
        else:
            ops[c] = {f: block["ops"][c][f] * N_LAYER for f in FIELDS}
    return ops


def totals(ops: dict) -> dict:
    """Bytes, rounds and seconds summed over the categories."""
    return {f: sum(ops[c][f] for c in CATEGORIES) for f in FIELDS}


def crypten_prediction(variant: str) -> dict:
    from pi_lnfree.secure.costmodel import predict
    from pi_lnfree.secure.profile import load_profile

    cfg = make_config("gpt2-small", variant, vocab_size=VOCAB)
    return predict(cfg, load_profile(ROOT / "protocols" / "crypten-2pc-ttp.toml"), SEQ_LEN)


def report(args) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    nets = load_networks()
    out: dict = {"protocols": {}}
    md = [
        "# GPT-2-small under SPU (SEMI2K, CHEETAH) and CrypTen: what removing LayerNorm and GELU saves",
        "",
        f"GPT-2-small shape: {N_LAYER} layers, 12 heads, d=768, vocabulary {VOCAB:,} (the authors' tokenizer), "
        f"T={SEQ_LEN}, one sequence, random weights (costs depend on shapes only). Bytes: sent by both parties "
        "together, input sharing apart; rounds: SPU's send actions of the busiest party (CHEETAH's OT and HE "
        "steps send several per round, so its WAN column is an upper bound); WAN: 100 Mbit/s, 80 ms RTT "
        "(`protocols/networks.toml`), local seconds of this machine + rounds x RTT + bytes / bandwidth.",
        "",
        "**Assembled**: embedding(52,000) + 12 x the variant's measured block + its norm sites + LM head(52,000), "
        "from one-layer runs under real SPU parties; the embedding and LM head come from a line in V through "
        "four one-layer probes ("
        + "; ".join(f"{p}: V = " + ", ".join(str(v) for v in sorted({r['run']['vocab'] for r in runs
                                                                    if r['run']['protocol'] == p and r['run']['n_layer'] == 1}))
                    for p in sorted({r['run']['protocol'] for r in runs}))
        + "). **Measured**: the whole 12-layer model run directly. Reproduce: `benchmarks/spu_gpt2.py measure "
        "--protocol spu-semi2k`, `... --protocol spu-semi2k --full --variants sm-ln-g,sm-r`, `... --protocol "
        "spu-cheetah --probe-vocabs 512,2048,1024,768`, then `benchmarks/spu_gpt2.py report`.",
    ]
    table = ["", "| engine / protocol | configuration | how | GB | GB without embedding and LM head | rounds | local s "
             "| WAN s | GB saving vs SM+LN+G | saving without embedding and LM head | WAN saving |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cats = ["", "GB per operator category:", "",
            "| protocol | configuration | how | " + " | ".join(CATEGORIES) + " |", "|---|---|---|" + "---:|" * len(CATEGORIES)]
    fits = ["", "Vocabulary lines (bytes = a + b V through the probes) and their largest relative residual:", "",
            "| protocol | category | a (MB) | b (KB per vocabulary entry) | max residual | at V=52,000 (GB) |",
            "|---|---|---:|---:|---:|---:|"]
    for protocol in sorted({r["run"]["protocol"] for r in runs}):
        probes = [r for r in runs if r["run"]["protocol"] == protocol and r["run"]["n_layer"] == 1]
        if len({r["run"]["vocab"] for r in probes}) < 2:
            print(f"{protocol}: fewer than two probe vocabularies, skipped", file=sys.stderr)
            continue
        lines = vocab_lines(probes)
        for c in VOCAB_CATS:
            ln = lines[(c, "bytes")]
            fits.append(f"| {protocol} | {c} | {ln['a'] / 1e6:,.2f} | {ln['b'] / 1e3:,.2f} | "
                        f"{100 * ln['max_rel_residual']:.2f}% | {(ln['a'] + ln['b'] * VOCAB) / 1e9:,.3f} |")
        base: dict[str, tuple[float, float, float]] = {}  # how -> SM+LN+G's (bytes, bytes w/o vocab, WAN s)
        for variant in VARIANTS:
            block = next((r for r in probes if r["run"]["variant"] == variant), None)
            if block is None:
                continue
            ops = assemble(block, lines, variant)
            wan = network_estimate(ops, nets)["wan"]["seconds"]
            rows = [("assembled", ops, wan)]
            fulls = [r for r in runs if r["run"]["protocol"] == protocol and r["run"]["n_layer"] == N_LAYER]
            full = next((r for r in fulls if r["run"]["variant"] == variant), None)
            if full is not None:
                rows.append(("measured", full["ops"], full["network"]["wan"]["seconds"]))
            elif fulls:  # the embedding and LM head do not depend on the variant: take a whole model's
                fixed = {**ops, **{c: {f: fulls[0]["ops"][c][f] for f in FIELDS} for c in VOCAB_CATS}}
                rows.append((MIXED, fixed, network_estimate(fixed, nets)["wan"]["seconds"]))
            out["protocols"].setdefault(protocol, {})[variant] = {
                how: {"ops": o, "total": totals(o), "wan_seconds": w} for how, o, w in rows}
            label = variant_label(make_config("gpt2-small", variant))
            for how, o, w in rows:
                t = totals(o)
                body = t["bytes"] - sum(o[c]["bytes"] for c in VOCAB_CATS)
                if variant == "sm-ln-g":
                    base[how] = (t["bytes"], body, w)
                b0 = base.get("measured" if how == MIXED else how)
                saves = ("", "", "") if b0 is None else (f"{b0[0] / t['bytes']:.2f}x", f"{b0[1] / body:.2f}x",
                                                         f"{b0[2] / w:.2f}x")
                table.append(f"| SPU {protocol} | {label} | {how} | {t['bytes'] / 1e9:,.2f} | {body / 1e9:,.2f} | "
                             f"{t['rounds']:,.0f} | {t['seconds']:,.0f} | {w:,.0f} | {saves[0]} | {saves[1]} | {saves[2]} |")
                cats.append(f"| {protocol} | {label} | {how} | "
                            + " | ".join(f"{o[c]['bytes'] / 1e9:,.3f}" for c in CATEGORIES) + " |")
    cbase = None
    for variant in VARIANTS:
        p = crypten_prediction(variant)
        b, w = p["total"]["bytes"], p["network"]["wan"]["seconds"]
        body = b - sum(p["ops"][c]["bytes"] for c in VOCAB_CATS)
        cbase = cbase or (b, body, w)
        out.setdefault("crypten", {})[variant] = {"total": p["total"], "ops": p["ops"], "wan_seconds": w}
        table.append(f"| CrypTen 2PC (TTP) | {p['label']} | cost model | {b / 1e9:,.2f} | {body / 1e9:,.2f} | "
                     f"{p['total']['rounds']:,.0f} | {p['total']['seconds']:,.0f} | {w:,.0f} | {cbase[0] / b:.2f}x | "
                     f"{cbase[1] / body:.2f}x | {cbase[2] / w:.2f}x |")
    base_gb, base_min = PUBLISHED["sm-ln-g"]
    for variant, (gb, minutes) in PUBLISHED.items():
        table.append(f"| SecretFlow 2PC, published | {variant_label(make_config('gpt2-small', variant))} | "
                     f"measured by the authors | {gb} | | | | {60 * minutes:,.0f} | {base_gb / gb:.2f}x | | "
                     f"{base_min / minutes:.2f}x |")
    md += table + cats + fits
    md += ["", "Runs (each a real SPU session: one process per party on this machine):", "",
           "| file | MB | rounds | local s | wall s | load average before / after |", "|---|---:|---:|---:|---:|---:|"]
    for p, r in zip(sorted(RUNS.glob("*.json")), runs, strict=True):
        before, after = r["run"]["before"], r["run"]["after"]
        md.append(f"| {p.name} | {r['total']['bytes'] / 1e6:,.1f} | {r['total']['rounds']:,.0f} | "
                  f"{r['total']['seconds']:,.1f} | {r['wall_seconds']:,.0f} | "
                  f"{before['loadavg'][0]:.1f} / {after['loadavg'][0]:.1f} |")
    if runs:
        m = runs[0]["run"]["before"]
        md += ["", f"Machine: {m['cpus']} CPUs ({m['machine']}), flags {' '.join(m['cpu_flags'])}; "
               f"runs dated {min(r['run']['before']['date'] for r in runs)} to "
               f"{max(r['run']['after']['date'] for r in runs)}."]
    stem = ROOT / "benchmarks" / "results" / "spu_gpt2"
    write_json(stem.with_suffix(".json"), out)
    text = "\n".join(md) + "\n"
    notes = Path(str(stem) + ".notes.md")
    if notes.exists():
        text += "\n" + notes.read_text()
    write_text(stem.with_suffix(".md"), text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="run the one-layer probes (or --full models) under one SPU profile")
    m.add_argument("--protocol", required=True, help="an SPU profile TOML or a shipped name")
    m.add_argument("--variants", default=",".join(VARIANTS))
    m.add_argument("--probe-vocabs", default="512,2048,4096,8192",
                   help="the vocabulary of each variant's one-layer run, in the order of the variants")
    m.add_argument("--full", action="store_true", help=f"the whole {N_LAYER}-layer model at vocabulary {VOCAB:,}")
    m.add_argument("--timeout", type=float, default=7200.0)
    sub.add_parser("report", help="assemble the models and write benchmarks/results/spu_gpt2.md")
    args = ap.parse_args()
    measure(args) if args.cmd == "measure" else report(args)


if __name__ == "__main__":
    main()
