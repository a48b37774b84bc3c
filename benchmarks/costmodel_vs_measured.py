"""Cost model vs a real secure run of a GPT-2-small-shaped block, and predicted full-model tables.

    .venv/bin/python benchmarks/costmodel_vs_measured.py [--protocol crypten-2pc-ttp]
        [--out benchmarks/results/costmodel_gpt2_block.md] [--skip-measure]

1. Measures one block of GPT-2-small shape (d=768, 12 heads, T=128) for SM+LN+G and SM+R under two
   real local CrypTen parties (one launch) and compares each operator's bytes, rounds and seconds
   with the cost model's prediction (`costmodel.trace(cfg, T, layer=0)` + the profile's calibration).
2. Predicts full models (GPT-2-small and Pythia-70M, vocabulary 52,000 as the paper's CodeParrot
   tokenizer, T=128 and T=256) for SM+LN+G, SM+LN+R, SM+G, SM+R: bytes, rounds, LAN and WAN latency.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pi_lnfree.config import make_config, variant_label
from pi_lnfree.secure.calibrate import measure
from pi_lnfree.secure.costmodel import load_calibration, predict, predicted_state, trace
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("sm-ln-g", "sm-ln-r", "sm-g", "sm-r")
VOCAB = 52000
BLOCK_VARIANTS = ("sm-ln-g", "sm-r")
BLOCK_CATEGORIES = ("linear", "attention", "softmax", "layernorm", "activation", "other")


def block_comparison(profile_path: str, skip_measure: bool) -> list[str]:
    profile = load_profile(profile_path)
    cal = load_calibration(profile)
    cfgs = {v: make_config("gpt2-small", v, vocab_size=64, n_layer=1) for v in BLOCK_VARIANTS}
    preds = {v: predicted_state(trace(cfg, 128, layer=0), cal) for v, cfg in cfgs.items()}
    meas: dict[str, dict] = {}
    wall = None
    if not skip_measure:
        t0 = time.perf_counter()
        items = [{"type": "block", "config": cfg.to_dict(), "T": 128, "layer": 0} for cfg in cfgs.values()]
        states = measure(profile, items, timeout_s=1800)
        meas = {v: s[0] for v, s in zip(cfgs, states, strict=True)}
        wall = time.perf_counter() - t0
    lines = []
    for v, cfg in cfgs.items():
        lines += [f"### {variant_label(cfg)} block, T=128, d=768, 12 heads ({profile.name})", ""]
        lines += ["| operator | calls | MB predicted | MB measured | rounds predicted | rounds measured "
                  "| dealer MB predicted | dealer MB measured | compute s predicted (est.) | compute s measured |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for cat in (*BLOCK_CATEGORIES, "total"):
            p = preds[v]["span"] if cat == "total" else preds[v]["ops"][cat]
            m = (meas[v]["span"] if cat == "total" else meas[v]["ops"][cat]) if meas else None
            cells = [f"{cat}", f"{p['calls']:.0f}"]
            for fld, fmt in (("bytes", "{:,.3f}"), ("rounds", "{:.0f}"), ("dealer_bytes", "{:,.3f}"), ("seconds", "{:.2f}")):
                div = 1e6 if "bytes" in fld else 1.0
                cells += [fmt.format(p[fld] / div), fmt.format(m[fld] / div) if m else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if wall is not None:
        off = [(v, c, f) for v in cfgs for c in CATEGORIES for f in ("bytes", "rounds", "dealer_bytes")
               if preds[v]["ops"][c][f] != meas[v]["ops"][c][f]]
        verdict = ("Bytes, rounds and dealer bytes: predicted = measured for every operator."
                   if not off else f"Predicted != measured for: {off}.")
        lines += [f"{verdict} Local seconds are an estimate from per-unit times of the calibration run; they "
                  f"move with the machine's load. Measured in one launch of local parties ({wall:.0f} s wall for "
                  "both blocks, with weight sharing and process start).", ""]
    return lines


def max_method_check() -> list[str]:
    """Every CrypTen max method: fit the tiny calibration design, then predict softmax calls of
    shapes the fit never saw (TFP parties: the online traffic is that of TTP)."""
    import dataclasses

    from pi_lnfree.secure.calibrate import design, fit
    from pi_lnfree.secure.costmodel import Call

    base = load_profile("crypten-2pc-tfp")
    held_out = [dict(H=1, T=50), dict(H=2, T=37), dict(H=1, T=128)]
    lines = ["| max method | softmax (H, T) | MB predicted | MB measured | rounds predicted | rounds measured |",
             "|---|---|---|---|---|---|"]
    for method in ("log_reduction", "double_log_reduction", "accelerated_cascade", "pairwise"):
        profile = dataclasses.replace(base, max_method=method, path=None)
        calls = design(profile, timing=False)
        extra = [{"type": "call", "kind": "softmax", "dims": d, "repeat": 1} for d in held_out]
        states = measure(profile, calls + extra, timeout_s=1800)
        cal = fit(profile, calls, states[: len(calls)])
        for dims, st in zip(held_out, states[len(calls):], strict=True):
            p, m = cal.call_cost(Call.make("softmax", "softmax", **dims)), st[0]["ops"]["softmax"]
            lines.append(f"| {method} | ({dims['H']}, {dims['T']}) | {p['bytes'] / 1e6:,.3f} | {m['bytes'] / 1e6:,.3f} | "
                         f"{p['rounds']:.0f} | {m['rounds']:.0f} |")
    return [*lines, ""]


def secure_eval_comparison(profile_path: str, path: Path) -> list[str]:
    """Predictions for the exact runs recorded by `benchmarks/secure_block.py` (secure-eval JSON:
    a 1-layer GPT-2-small-shaped model, vocabulary 512, T=128, with embedding, final norm, head)."""
    if not path.is_file():
        return [f"({path.name} not found: run benchmarks/secure_block.py first)", ""]
    import json

    profile = load_profile(profile_path)
    lines = []
    for v, run in json.loads(path.read_text()).items():
        if run["protocol"]["name"] != profile.name:
            continue
        pred = predict(make_config("gpt2-small", v, vocab_size=512, n_layer=1), profile, int(run["seq_len"]))
        lines += [f"### {run['label']}: secure-eval run vs prediction", "",
                  "| operator | MB secure-eval | MB predicted | rounds secure-eval | rounds predicted "
                  "| local s secure-eval | local s predicted (est.) |", "|---|---|---|---|---|---|---|"]
        for cat in (*CATEGORIES, "total"):
            m = run["total"] if cat == "total" else run["ops"][cat]
            q = pred["total"] if cat == "total" else pred["ops"][cat]
            lines.append(f"| {cat} | {m['bytes'] / 1e6:,.3f} | {q['bytes'] / 1e6:,.3f} | {m['rounds']:.0f} | "
                         f"{q['rounds']:.0f} | {m['seconds']:.2f} | {q['seconds']:.2f} |")
        lines.append("")
    return lines


def full_model_tables(profile_path: str) -> list[str]:
    profile = load_profile(profile_path)
    lines = []
    for preset in ("gpt2-small", "pythia-70m"):
        for T in (128, 256):
            rows, base = [], None
            for v in VARIANTS:
                cfg = make_config(preset, v, vocab_size=VOCAB, block_size=max(T, 128))
                r = predict(cfg, profile, T)
                tot, net = r["total"], r["network"]
                if base is None:
                    base = r
                rows.append(
                    f"| {r['label']} | {tot['bytes'] / 1e9:.2f} | {tot['rounds']:,.0f} | "
                    f"{net['lan']['seconds']:.1f} | {net['wan']['seconds'] / 60:.2f} | "
                    f"{base['total']['bytes'] / tot['bytes']:.2f}x | {base['network']['wan']['seconds'] / net['wan']['seconds']:.2f}x |"
                )
            lines += [f"### {preset}, T={T} (vocabulary {VOCAB:,}, {profile.name})", "",
                      "| config | comm (GB) | rounds | LAN (s) | WAN (min) | bytes saving vs SM+LN+G | WAN saving |",
                      "|---|---|---|---|---|---|---|", *rows, ""]
            share = {c: base["ops"][c]["bytes"] / base["total"]["bytes"] for c in CATEGORIES}
            top = ", ".join(f"{c} {s:.0%}" for c, s in sorted(share.items(), key=lambda kv: -kv[1]) if s >= 0.01)
            lines += [f"SM+LN+G bytes by operator: {top}.", ""]
    return lines


# The authors' follow-up (REFERENCES.md): SecretFlow 2PC (BumbleBee), two 32-core machines, WAN
# 100 Mbit/s and 80 ms; GPT-2 on CodeParrot. (GB, minutes) per T and configuration.
PAPER = {128: {"sm-ln-g": (25.32, 8.21), "sm-ln-r": (9.44, 6.06)}, 256: {"sm-ln-g": (58.51, 16.57), "sm-ln-r": (26.73, 12.59)}}


def paper_comparison(profile_path: str) -> list[str]:
    """Our predicted GPT-2-small costs next to the paper's follow-up numbers, and the ratios."""
    profile = load_profile(profile_path)
    cal = load_calibration(profile)
    lines = ["| T | config | paper comm (GB) | predicted comm (GB) | paper WAN (min) | predicted WAN (min) |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for T, rows in PAPER.items():
        ours = {v: predict(make_config("gpt2-small", v, vocab_size=VOCAB, block_size=max(T, 128)), profile, T)
                for v in rows}
        for v, (gb, minutes) in rows.items():
            r = ours[v]
            lines.append(f"| {T} | {r['label']} | {gb:.2f} | {r['total']['bytes'] / 1e9:.2f} | {minutes:.2f} | "
                         f"{r['network']['wan']['seconds'] / 60:.2f} |")
        g, rl = ours["sm-ln-g"], ours["sm-ln-r"]
        ratios.append(
            f"T={T}: SM+LN+G / SM+LN+R bytes {rows['sm-ln-g'][0] / rows['sm-ln-r'][0]:.2f}x in the paper vs "
            f"{g['total']['bytes'] / rl['total']['bytes']:.2f}x predicted here; WAN latency "
            f"{rows['sm-ln-g'][1] / rows['sm-ln-r'][1]:.2f}x vs {g['network']['wan']['seconds'] / rl['network']['wan']['seconds']:.2f}x"
        )
    g = ours["sm-ln-g"]
    wan = g["network"]["wan"]
    bw_s = g["total"]["bytes"] * 8 / wan["bandwidth_bits_per_s"]
    rtt_s = g["total"]["rounds"] * wan["rtt_ms"] / 1000

    def per_element(kind: str) -> float:
        fit = cal.kinds[kind]
        return dict(zip(fit.features["size"], fit.coef["bytes"], strict=True))["elements"]

    gelu, relu = per_element("activation:gelu"), per_element("activation:relu")
    lines += ["", *(f"- {r}." for r in ratios), ""]
    lines.append(
        "The protocols differ, so equal numbers are not expected. Here CrypTen's GELU (tanh formula) sends "
        f"{gelu:.0f} bytes per element against ReLU's {relu:.0f} ({gelu / relu:.2f}x), and Beaver matmuls with "
        "dealer triples send only the two masked operands online (16 bytes per element; the triples are "
        "preprocessing, reported apart as dealer traffic). BumbleBee evaluates linear layers with homomorphic "
        "encryption and GELU as a piecewise polynomial (several comparisons and multiplications per element); the "
        "paper's own ratios show its GELU is far dearer relative to ReLU than CrypTen's. So ReLU saves less here (the activation is "
        f"{g['ops']['activation']['bytes'] / g['total']['bytes']:.0%} of SM+LN+G's bytes at T=256) than the paper's "
        "2.2-2.7x. Both agree on the direction and on the activation being the lever: dropping LayerNorm alone "
        f"(SM+G) saves rounds ({cal.kinds['layernorm'].coef['rounds'][0]:.0f} per norm) but almost no bytes. "
        "At T=256 the predicted WAN latency of SM+LN+G is "
        f"{wan['seconds'] / 60:.1f} min: {bw_s / 60:.1f} min of bandwidth (bytes x 8 / 100 Mbit/s), "
        f"{rtt_s / 60:.1f} min of round trips ({g['total']['rounds']:,.0f} x 80 ms) and "
        f"{g['total']['seconds'] / 60:.1f} min of local compute estimated for this 2-core machine (the paper's "
        "parties had 32 cores each)."
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="crypten-2pc-ttp", help="a profile TOML or a shipped name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "costmodel_gpt2_block.md"))
    ap.add_argument("--skip-measure", action="store_true", help="Only the predictions (no secure run).")
    args = ap.parse_args()
    block = block_comparison(args.protocol, args.skip_measure)
    block += ["## Against secure-eval's recorded block (benchmarks/results/secure_gpt2_block.json)", "",
              *secure_eval_comparison(args.protocol, ROOT / "benchmarks" / "results" / "secure_gpt2_block.json")]
    tables = full_model_tables(args.protocol)
    head = ["# Cost model: predicted vs measured (GPT-2-small block) and predicted full models", "",
            "Generated by `.venv/bin/python benchmarks/costmodel_vs_measured.py "
            f"--protocol {Path(args.protocol).relative_to(ROOT) if Path(args.protocol).is_absolute() else args.protocol}`"
            " (full-model rows: `pi-lnfree cost --preset P --variant V --vocab-size 52000 "
            "--set model.block_size=T --protocol FILE --seq-len T --json`).", ""]
    paper = paper_comparison(args.protocol)
    if not args.skip_measure:
        block += ["## Softmax under every CrypTen max method, shapes outside the calibration design", "",
                  "Fitted on the tiny design (`design(profile, timing=False)`, TFP parties), then measured at "
                  "held-out shapes:", "", *max_method_check()]
    Path(args.out).write_text("\n".join([*head, "## One block, predicted vs measured", "", *block,
                                          "## Full models, predicted", "", *tables,
                                          "## Against the paper's follow-up (BumbleBee, SecretFlow)", "", *paper]) + "\n")
    print("\n".join(block + tables + paper))


if __name__ == "__main__":
    main()
