"""One tiny model pair under every engine: what removing LayerNorm and GELU saves under CrypTen
and under SPU's SEMI2K, CHEETAH and ABY3, on the same checkpoints and tokens.

Prepares the test suite's small data folder (1.5 MB of the standard library, 512-token BPE, T=64
chunks), trains the `tiny` preset (2 layers, 4 heads, d=64) as SM+LN+G and SM+R for a few AdamW
steps (as `tests/test_secure_eval.py` does, so activations have realistic scales), then runs
`secure-eval` on one validation sequence of T tokens with each profile and writes a markdown
table (bytes, rounds, local seconds, LAN/WAN estimates, max logit error, per-category MB) and the
raw results as JSON. Not a timed benchmark: the local seconds are those of a shared machine.

    .venv/bin/python benchmarks/spu_cross_engine.py [--seq-len 32] [--steps 30]
        [--profiles crypten-2pc-ttp,spu-semi2k,spu-cheetah,spu-aby3]
        [--out benchmarks/results/spu_cross_engine.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import DATA_DIR_ARGS  # noqa: E402
from test_secure_eval import _train_tiny  # noqa: E402

from pi_lnfree.data import prepare  # noqa: E402
from pi_lnfree.secure.evaluate import secure_eval  # noqa: E402
from pi_lnfree.secure.meter import CATEGORIES  # noqa: E402

VARIANTS = ("sm-ln-g", "sm-r")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profiles", default="crypten-2pc-ttp,spu-semi2k,spu-cheetah,spu-aby3")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spu_cross_engine.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="pi-lnfree-cross-") as tmp:
        data = Path(tmp) / "data"
        prepare(out=data, **DATA_DIR_ARGS)
        ckpts = {v: _train_tiny(v, data, Path(tmp) / f"{v}.pt", steps=args.steps) for v in VARIANTS}
        for name in args.profiles.split(","):
            for v in VARIANTS:
                print(f"{name} {v} ...", file=sys.stderr, flush=True)
                r = secure_eval(ckpts[v], ROOT / "protocols" / f"{name}.toml", seq_len=args.seq_len, samples=1,
                                data=data, timeout_s=args.timeout)
                results.setdefault(name, {})[v] = r
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(
        {p: {v: {k: r[k] for k in ("total", "ops", "network", "fidelity", "parties", "spu", "wall_seconds") if k in r}
             for v, r in vs.items()} for p, vs in results.items()}, indent=1, default=str))
    out.write_text(render(results, args))
    print(out.read_text())


def render(results, args) -> str:
    lines = [
        "# One tiny model pair under CrypTen and SPU",
        "",
        f"`.venv/bin/python benchmarks/spu_cross_engine.py --seq-len {args.seq_len} --steps {args.steps} "
        f"--profiles {args.profiles}`",
        "",
        f"`tiny` preset (2 layers, 4 heads, d=64, vocabulary 512), SM+LN+G and SM+R trained {args.steps} AdamW "
        f"steps; one validation sequence, T={args.seq_len}. Bytes: sent by all parties (operators only; SPU's "
        "input sharing apart). Rounds: CrypTen's communication calls; SPU's send actions of the busiest party. "
        "Local seconds on a shared 2-core machine (indicative only). LAN 3 Gbit/s + 0.3 ms, WAN 100 Mbit/s + "
        "80 ms per round (`protocols/networks.toml`).",
        "",
        "| profile | variant | MB | rounds | local s | LAN s | WAN s | max logit err | saving SM+LN+G -> SM+R (bytes) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, vs in results.items():
        base = vs["sm-ln-g"]["total"]["bytes"]
        for v, r in vs.items():
            saving = f"{base / r['total']['bytes']:.2f}x" if v != "sm-ln-g" else ""
            lines.append(
                f"| {p} | {r['variant']} | {r['total']['bytes'] / 1e6:.2f} | {r['total']['rounds']:.0f} | "
                f"{r['total']['seconds']:.1f} | {r['network']['lan']['seconds']:.2f} | {r['network']['wan']['seconds']:.1f} | "
                f"{r['fidelity']['max_abs_logit_error']:.2g} | {saving} |")
    lines += ["", "MB per operator category:", "",
              "| profile | variant | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---:|" * len(CATEGORIES)]
    for p, vs in results.items():
        for r in vs.values():
            lines.append(f"| {p} | {r['variant']} | " + " | ".join(f"{r['ops'][c]['bytes'] / 1e6:.2f}" for c in CATEGORIES) + " |")
    spu = [(p, r["spu"]) for p, vs in results.items() for r in vs.values() if "spu" in r]
    if spu:
        lines += ["", "SPU input sharing and session setup (not in the totals), SM+LN+G: "
                  + "; ".join(f"{p}: weights {s['weight_sharing_bytes'] / 1e6:.2f} MB, tokens "
                              f"{s['token_sharing_bytes_per_sequence'] / 1e6:.3f} MB per sequence, setup "
                              f"{s['session_setup_bytes'] / 1e6:.2f} MB" for p, s in spu[::2])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
