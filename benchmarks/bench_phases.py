"""One-phase vs two-phase secure inference (offline preprocessing, online), in one run per model.

Two parts:

1. `material` (no MPC, seconds): the exact offline material of one sequence per party, from the
   request trace of the forward (`phases.model_trace`, derived on data-less tensors), for
   GPT-2-small (vocabulary 50257) at T=128 and T=512, SM+LN+G and SM+R, TTP and TFP: tuples,
   bytes each party stores (TTP: party 0 the dealer's share of each tuple, party 1 nothing; TFP:
   both all their shares), whether that fits the in-memory budget or goes to a spool file, and
   the parties' protocol rounds and bytes the trace predicts.
2. `compare` (real parties + TTP dealer): for each variant, one party session that runs the
   same forward one-phase (CrypTen's dealer on demand) and then two-phase (offline, then the
   online forward without the dealer), from the same seeds (`phases.replay_seeds`), and checks
   that the logits are bit-identical. Reports per mode: bytes, rounds, seconds of each phase,
   the online phase's LAN floor (bytes / bandwidth + rounds x RTT, `protocols/networks.toml`)
   and its LAN latency as a multiple of that floor, and peak resident memory per party.
   Default: GPT-2-small (random weights, vocabulary 50257, 12 layers) at T=128, SM+LN+G and SM+R;
   a GPT-2-small forward takes minutes and ~3.5 GB per party process.

    .venv/bin/python benchmarks/bench_phases.py [--skip-material] [--skip-compare]
        [--variants sm-ln-g,sm-r] [--seq-len 128] [--n-layer 12] [--vocab-size 50257]
        [--out benchmarks/results/bench_phases.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROTOCOLS = {"TTP": ROOT / "protocols" / "crypten-2pc-ttp.toml", "TFP": ROOT / "protocols" / "crypten-2pc-tfp.toml"}
GB = 1e9


def material_rows(variants: list[str], seq_lens: list[int], vocab_size: int, n_layer: int) -> list[dict]:
    """Part 1: the trace-derived offline material per party (no parties are started)."""
    from pi_lnfree.config import make_config
    from pi_lnfree.secure import crypten_compat, phases
    from pi_lnfree.secure.profile import load_profile

    rows = []
    ttp = load_profile(PROTOCOLS["TTP"])
    crypten_compat.configure(ttp)
    for variant in variants:
        for T in seq_lens:
            cfg = make_config("gpt2-small", variant, vocab_size=vocab_size, n_layer=n_layer, block_size=max(T, 1024))
            t0 = time.perf_counter()
            trace = phases.model_trace(cfg, ttp, T)  # the same requests under either provider
            trace_s = time.perf_counter() - t0
            for provider in PROTOCOLS:
                per_party = [8 * phases.material_elements(trace, provider, rank) for rank in (0, 1)]
                rows.append({
                    "variant": variant, "seq_len": T, "provider": provider, "requests": len(trace),
                    "client_bytes": per_party[0], "server_bytes": per_party[1],
                    "spooled": [b > phases.DEFAULT_BUDGET_BYTES for b in per_party],
                    "dealer_bytes": trace.dealer_bytes if provider == "TTP" else 0,
                    "party_rounds": trace.rounds, "party_bytes_logged": trace.bytes,
                    "trace_seconds": trace_s,
                })
    return rows


def compare_variant(variant: str, seq_len: int, vocab_size: int, n_layer: int, folder: Path, timeout: float) -> dict:
    """Part 2 for one variant: one session, one-phase then two-phase forward (TTP)."""
    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.config import make_config
    from pi_lnfree.model import GPT
    from pi_lnfree.secure.meter import combine_parties, total_of
    from pi_lnfree.secure.parties import launch_local, local_jobs
    from pi_lnfree.secure.phases import combine_offline
    from pi_lnfree.secure.profile import load_networks, load_profile

    cfg = make_config("gpt2-small", variant, vocab_size=vocab_size, n_layer=n_layer, block_size=max(seq_len, 1024))
    torch.manual_seed(0)
    ckpt = folder / f"{variant}.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    tokens = torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    payload = {"seq_len": seq_len, "seed": 0, "modes": ["one", "two"]}
    jobs = local_jobs(load_profile(PROTOCOLS["TTP"]), timeout, {0: dict(tokens=tokens), 1: dict(checkpoint=str(ckpt))},
                      program="pi_lnfree.secure.phase_runs:compare_program", payload=payload)
    t0 = time.perf_counter()
    results = launch_local(jobs, timeout)
    wall = time.perf_counter() - t0
    client = results[0]
    lan = load_networks()["lan"]
    out = {"variant": variant, "seq_len": seq_len, "n_layer": n_layer, "vocab_size": vocab_size, "wall_seconds": wall,
           "trace": client["trace"], "dealer_served": results[2]["served"]}
    one, two = client["runs"]
    out["bit_identical"] = bool(torch.equal(one["logits"], two["logits"]))
    for run in (one, two):
        forward = total_of(combine_parties(run["meter"], run["server"]["meter"])["ops"])
        rec = {"online": {"bytes": forward["bytes"], "rounds": forward["rounds"], "seconds": forward["seconds"],
                          "dealer_bytes": forward["dealer_bytes"], "dealer_requests": forward["dealer_requests"]},
               "peak_rss_bytes": {"client": run["peak_rss_bytes"], "server": run["server"]["peak_rss_bytes"]}}
        if run["offline"] is not None:
            rec["offline"] = combine_offline(run["offline"], run["server"]["offline"])
        floor = lan.seconds(0.0, forward["rounds"], forward["bytes"])
        rec["online"]["lan_floor_seconds"] = floor
        rec["online"]["lan_seconds"] = lan.seconds(forward["seconds"], forward["rounds"], forward["bytes"])
        rec["online"]["lan_ratio_to_floor"] = rec["online"]["lan_seconds"] / floor
        out[run["mode"]] = rec
    return out


def machine() -> dict:
    """Where and when this ran: date, CPU model and vector flags, torch's CPU kernel level."""
    import os
    import platform

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": model, "cpus": os.cpu_count(),
            "vector_flags": sorted(f for f in flags if f.startswith(("avx", "fma"))),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# One-phase vs two-phase secure inference", "", f"Command: `{result['command']}`", "",
             f"Date: {m['date']}; CPU: {m['cpu']}, {m['cpus']} cores, flags {' '.join(m['vector_flags'])} "
             f"(torch kernels: {m['torch_cpu_capability']}); load average before {result['loadavg_before']}, "
             f"after {result['loadavg_after']}.", ""]
    if result.get("material"):
        lines += ["## Offline material per sequence (exact, from the request trace)", "",
                  "| variant | T | provider | tuples | client GB | server GB | in memory (budget 4 GiB) | "
                  "dealer GB | party rounds |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["material"]:
            where = " / ".join("spool file" if s else "memory" for s in r["spooled"])
            lines.append(f"| {r['variant']} | {r['seq_len']} | {r['provider']} | {r['requests']:,} | "
                         f"{r['client_bytes'] / GB:.3f} | {r['server_bytes'] / GB:.3f} | {where} | "
                         f"{r['dealer_bytes'] / GB:.3f} | {r['party_rounds']:,} |")
        lines.append("")
    for c in result.get("compare", []):
        lines += [f"## {c['variant']}, T={c['seq_len']}, {c['n_layer']} layers, vocabulary {c['vocab_size']} (TTP)", "",
                  f"Logits bit-identical between the two modes: {c['bit_identical']}. Session wall "
                  f"{c['wall_seconds']:.0f} s. Dealer served: {c['dealer_served']}.", "",
                  "| mode | phase | MB | rounds | seconds | LAN floor s | LAN s | LAN / floor | peak RSS client / server GB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for mode in ("one", "two"):
            rec = c[mode]
            rss = f"{rec['peak_rss_bytes']['client'] / GB:.2f} / {rec['peak_rss_bytes']['server'] / GB:.2f}"
            if "offline" in rec:
                off = rec["offline"]
                lines.append(f"| two-phase | offline | {off['bytes'] / 1e6:,.1f} | {off['rounds']:,} | "
                             f"{off['seconds']:.2f} | | | | |")
            on = rec["online"]
            label = "one-phase" if mode == "one" else "two-phase"
            phase = "forward (dealer on demand)" if mode == "one" else "online"
            lines.append(f"| {label} | {phase} | {on['bytes'] / 1e6:,.1f} | {on['rounds']:,.0f} | {on['seconds']:.2f} | "
                         f"{on['lan_floor_seconds']:.2f} | {on['lan_seconds']:.2f} | {on['lan_ratio_to_floor']:.2f} | {rss} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-material", action="store_true")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--variants", default="sm-ln-g,sm-r")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--material-seq-lens", default="128,512")
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_phases.md"))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    import os

    result: dict = {"command": "benchmarks/bench_phases.py " + " ".join(sys.argv[1:]), "machine": machine(),
                    "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if not args.skip_material:
        seq_lens = [int(t) for t in args.material_seq_lens.split(",") if t]
        result["material"] = material_rows(variants, seq_lens, 50257, 12)
    if not args.skip_compare:
        with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
            result["compare"] = [compare_variant(v, args.seq_len, args.vocab_size, args.n_layer, Path(tmp), args.timeout)
                                 for v in variants]
    result["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(result))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
