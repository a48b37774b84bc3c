"""Local int64 ring products (no MPC): torch's int64 matmul vs the float64-limb ring_matmul.

The shapes are the products one Beaver matmul of a GPT-2-small block performs at T=128 (each
secret-shared matmul runs four of them: the triple's c = a @ b and three correction terms).
Every product is checked bit for bit against torch before it is timed. Best of `--repeats`.

    .venv/bin/python benchmarks/bench_matmul.py [--threads 1] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch

from pi_lnfree.secure.fast_matmul import best_seconds, measure_speedup, ring_matmul

# (name, left shape, right shape): GPT-2 small, T=128, 12 heads of 64, vocabulary 50257.
SHAPES = [
    ("qkv 128x768 @ 768x2304", (128, 768), (768, 2304)),
    ("scores 12x128x64 @ 12x64x128", (1, 12, 128, 64), (1, 12, 64, 128)),
    ("mix 12x128x128 @ 12x128x64", (1, 12, 128, 128), (1, 12, 128, 64)),
    ("out-proj 128x768 @ 768x768", (128, 768), (768, 768)),
    ("ffn-up 128x768 @ 768x3072", (128, 768), (768, 3072)),
    ("ffn-down 128x3072 @ 3072x768", (128, 3072), (3072, 768)),
    ("lm-head 128x768 @ 768x50257", (128, 768), (768, 50257)),
]


def run(threads: int, repeats: int, skip_lm_head: bool) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, sa, sb in SHAPES:
        if skip_lm_head and name.startswith("lm-head"):
            continue
        a = torch.randint(-(2**63), 2**63 - 1, sa, generator=gen)
        b = torch.randint(-(2**63), 2**63 - 1, sb, generator=gen)
        assert torch.equal(ring_matmul(a, b), torch.matmul(a, b)), name
        t_int = best_seconds(lambda a=a, b=b: torch.matmul(a, b), repeats)
        t_limb = best_seconds(lambda a=a, b=b: ring_matmul(a, b), repeats)
        t_f64 = best_seconds(lambda a=a, b=b: torch.matmul(a.double(), b.double()), repeats)
        rows.append({"product": name, "int64_s": t_int, "limbs_s": t_limb, "one_float64_gemm_s": t_f64,
                     "speedup": t_int / t_limb})
    return {"threads": threads, "repeats": repeats, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "calibration": measure_speedup(), "products": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-lm-head", action="store_true", help="skip the 768x50257 product (~1 GB of limbs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args.threads, args.repeats, args.skip_lm_head)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"torch {result['torch']}, capability {result['cpu_capability']}, {args.threads} thread(s)")
    print(f"{'product':32s} {'int64 s':>9s} {'limbs s':>9s} {'1 f64 gemm':>10s} {'speed-up':>8s}")
    for r in result["products"]:
        print(f"{r['product']:32s} {r['int64_s']:9.4f} {r['limbs_s']:9.4f} {r['one_float64_gemm_s']:10.4f} {r['speedup']:8.2f}x")


if __name__ == "__main__":
    main()
