"""Secure cost of one GPT-2-small-shaped block (d=768, 12 heads, FFN 3072) at T=128, per operator.

Builds one-layer `gpt2-small`-shaped checkpoints (random weights, embeddings scaled to a trained
model's magnitude; a small vocabulary so that the block, not the vocabulary, dominates) for
SM+LN+G and SM+R, runs each under two real CrypTen parties with `secure_eval`, and writes a
markdown table per variant plus the raw JSON results.

    .venv/bin/python benchmarks/secure_block.py [--protocol crypten-2pc-ttp]
        [--seq-len 128] [--vocab 512] [--variants sm-ln-g,sm-r] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pi_lnfree.checkpoint import save_checkpoint  # noqa: E402
from pi_lnfree.config import make_config  # noqa: E402
from pi_lnfree.model import GPT  # noqa: E402
from pi_lnfree.secure.evaluate import secure_eval  # noqa: E402
from pi_lnfree.secure.meter import CATEGORIES  # noqa: E402


def make_block_checkpoint(variant: str, vocab: int, path: Path, n_layer: int = 1) -> None:
    """A `gpt2-small`-shaped checkpoint of `n_layer` layers with random weights (seed 0)."""
    cfg = make_config("gpt2-small", variant, vocab_size=vocab, n_layer=n_layer)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        model.wte.weight.mul_(5.0)  # residual stream ~0.1 std, as early layers of a trained GPT-2
    save_checkpoint(path, model.state_dict(), cfg)


def table(result: dict) -> str:
    lan, wan = result["network"]["lan"], result["network"]["wan"]
    total_bytes = result["total"]["bytes"] or 1
    lines = [
        "| operator | MB sent | rounds | calls | local s | LAN s | WAN s | % bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CATEGORIES:
        op = result["ops"][c]
        lines.append(f"| {c} | {op['bytes'] / 1e6:,.2f} | {op['rounds']:,.0f} | {op['calls']:.0f} | "
                     f"{op['seconds']:.2f} | {lan['ops'][c]:.2f} | {wan['ops'][c]:.2f} | "
                     f"{100 * op['bytes'] / total_bytes:.1f} |")
    t = result["total"]
    lines.append(f"| **total** | **{t['bytes'] / 1e6:,.2f}** | **{t['rounds']:,.0f}** | | **{t['seconds']:.2f}** | "
                 f"**{lan['seconds']:.2f}** | **{wan['seconds']:.2f}** | 100 |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="crypten-2pc-ttp", help="a profile TOML or a shipped name")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--variants", default="sm-ln-g,sm-r")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="secure_gpt2_block", help="Output stem: NAME.md and NAME.json.")
    ap.add_argument("--from-json", help="Only re-render the markdown from a saved NAME.json.")
    ap.add_argument("--compare", nargs="*", default=[],
                    help="Saved JSONs of the SM+LN+G block under other GELU profiles, tabulated as a section.")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        (out / f"{args.name}.md").write_text(markdown(results, args) + gelu_section(results, args.compare) + "\n")
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            ckpt = Path(tmp) / f"{variant}.pt"
            make_block_checkpoint(variant, args.vocab, ckpt)
            t0 = time.perf_counter()
            r = secure_eval(ckpt, args.protocol, seq_len=args.seq_len, samples=1, timeout_s=args.timeout)
            print(f"{variant}: {time.perf_counter() - t0:.1f} s wall, {r['total']['bytes'] / 1e6:,.1f} MB",
                  file=sys.stderr)
            results[variant] = r
    stem = args.name
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(results, args) + "\n")
    print(json.dumps({v: {"total": r["total"], "wall_seconds": r["wall_seconds"]} for v, r in results.items()}))


def gelu_section(results: dict, compare: list[str]) -> str:
    """SM+LN+G's activation cost under each GELU method (this run and the `--compare` runs)."""
    runs = [results["sm-ln-g"]] if "sm-ln-g" in results else []
    runs += [json.loads(Path(p).read_text())["sm-ln-g"] for p in compare]
    if len(runs) < 2:
        return ""
    lines = ["", "", "## GELU approximations (SM+LN+G block)", "",
             "| profile | GELU via | activation MB | activation rounds | activation local s | total MB | "
             "WAN s | max abs logit error |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        act = r["ops"]["activation"]
        lines.append(f"| {r['protocol']['name']} | {r['protocol']['gelu']} | {act['bytes'] / 1e6:,.2f} | "
                     f"{act['rounds']:.0f} | {act['seconds']:.2f} | {r['total']['bytes'] / 1e6:,.2f} | "
                     f"{r['network']['wan']['seconds']:.2f} | {r['fidelity']['max_abs_logit_error']:.3g} |")
    lines += ["", "Commands for the other rows: the same script with `--protocol protocols/PROFILE.toml "
              "--variants sm-ln-g --name secure_gpt2_block_gelu_METHOD`; this file: `--from-json "
              "benchmarks/results/secure_gpt2_block.json --compare benchmarks/results/secure_gpt2_block_gelu_*.json`."]
    return "\n".join(lines)


def markdown(results: dict, args) -> str:
    cmd = (f".venv/bin/python benchmarks/secure_block.py --protocol {os.path.relpath(os.path.abspath(args.protocol), ROOT)} "
           f"--seq-len {args.seq_len} --vocab {args.vocab} --variants {args.variants}")
    parts = [
        f"# One GPT-2-small-shaped block under CrypTen 2PC: {Path(args.protocol).stem}, T={args.seq_len}",
        "",
        f"Command: `{cmd}`",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), two local party processes over gloo"
        + (" plus the TTP dealer process" if next(iter(results.values()))["parties"]["dealer"] else "") + ".",
        "One layer of d=768, 12 heads, FFN 3072, learned positions, tied head; vocabulary "
        f"{args.vocab} (embedding and LM head are small next to the block). Bytes: sent by both parties "
        "together for one forward pass; rounds: communicator calls; local s: wall time of each operator "
        "here; LAN/WAN: local s + rounds x RTT + bytes / bandwidth (protocols/networks.toml). Bytes and "
        "rounds are exact and machine-independent; local seconds depend on the machine and its load "
        "(this run shared its 2 cores with other jobs).",
    ]
    for variant, r in results.items():
        fid = r["fidelity"]
        parts += [
            "", f"## {r['label']} ({variant})", "", table(r), "",
            f"Wall time {r['wall_seconds']:.0f} s (process start, weight sharing and the forward). "
            f"TTP dealer traffic (preprocessing, not in the totals): {r['total']['dealer_bytes'] / 1e6:,.1f} MB. "
            f"Fidelity vs plaintext: max |logit error| {fid['max_abs_logit_error']:.3g}, "
            f"top-1 agreement {fid['top1_agreement']:.3f}.",
        ]
    if "sm-ln-g" in results and "sm-r" in results:
        base, lnfree = results["sm-ln-g"], results["sm-r"]
        parts += ["", "## SM+R vs SM+LN+G (same block)", "",
                  "| quantity | SM+LN+G | SM+R | change |", "|---|---:|---:|---:|"]
        rows = [("MB sent", base["total"]["bytes"] / 1e6, lnfree["total"]["bytes"] / 1e6),
                ("rounds", base["total"]["rounds"], lnfree["total"]["rounds"]),
                ("LAN s (estimate)", base["network"]["lan"]["seconds"], lnfree["network"]["lan"]["seconds"]),
                ("WAN s (estimate)", base["network"]["wan"]["seconds"], lnfree["network"]["wan"]["seconds"])]
        for c in ("layernorm", "activation"):
            rows.append((f"{c} MB", base["ops"][c]["bytes"] / 1e6, lnfree["ops"][c]["bytes"] / 1e6))
            rows.append((f"{c} rounds", base["ops"][c]["rounds"], lnfree["ops"][c]["rounds"]))
        for name, a, b in rows:
            parts.append(f"| {name} | {a:,.2f} | {b:,.2f} | {100 * (b - a) / a:+.1f}% |")
        parts += ["", "The LN-free model keeps only the final LayerNorm (1 call instead of 3); ReLU replaces "
                  "GELU's tanh formula (one comparison instead of a comparison, exp and reciprocal)."]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
