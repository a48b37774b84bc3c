"""The SPU cost model's predictions next to real SPU runs of GPT-2-small (`benchmarks/spu_gpt2.py`).

    python benchmarks/costmodel_spu.py [SPU_GPT2_JSON] > benchmarks/results/costmodel_spu.md

Reads the per-category bytes and rounds that `benchmarks/spu_gpt2.py report` assembled from
one-layer runs under real SPU parties (default `benchmarks/results/spu_gpt2.json`; GPT-2-small
shape, vocabulary 52,000, T=128, random weights) and prints, per protocol, configuration and
operator category, the prediction of `pi-lnfree cost` (`costmodel.predict`, from the shipped
calibration of that profile) and its relative difference. No parties run here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pi_lnfree.config import make_config
from pi_lnfree.secure.costmodel import load_calibration, predict
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile

VOCAB, T = 52000, 128


def _rel(p: float, m: float) -> str:
    return "0" if p == m else ("n/a" if m == 0 else f"{(p - m) / m:+.2e}")


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    print("# The SPU cost model vs real SPU runs: GPT-2-small, T=128, vocabulary 52,000\n")
    print(f"Measured: `{path}` (assembled by `benchmarks/spu_gpt2.py` from one-layer runs under real SPU parties). "
          "Predicted: `pi-lnfree cost --preset gpt2-small --variant V --vocab-size 52000 --protocol P --seq-len 128` "
          "(`benchmarks/costmodel_spu.py`). Bytes: all parties; rounds: send actions of the busiest party.\n")
    for proto, variants in data["protocols"].items():
        profile = load_profile(proto)
        cal = load_calibration(profile)
        print(f"## {proto} ({'exact' if cal.exact else 'least-squares fit'} calibration, {cal.meta.get('created')})\n")
        print("| configuration | category | measured bytes | predicted bytes | rel. diff | measured rounds "
              "| predicted rounds |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for variant, runs in variants.items():
            meas = (runs.get("measured") or runs.get("assembled"))["ops"]
            pred = predict(make_config("gpt2-small", variant, vocab_size=VOCAB), profile, T, cal=cal)["ops"]
            for c in [*CATEGORIES, "total"]:
                if c == "total":
                    m = {f: sum(meas[k][f] for k in CATEGORIES) for f in ("bytes", "rounds")}
                    p = {f: sum(pred[k][f] for k in CATEGORIES) for f in ("bytes", "rounds")}
                else:
                    m, p = meas[c], pred[c]
                print(f"| {variant} | {c} | {m['bytes']:,.0f} | {p['bytes']:,.0f} | {_rel(p['bytes'], m['bytes'])} "
                      f"| {m['rounds']:,.1f} | {p['rounds']:,.0f} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/spu_gpt2.json")
