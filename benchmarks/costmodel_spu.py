"""The SPU cost model's predictions next to real SPU runs of GPT-2-small (`benchmarks/spu_gpt2.py`).

    python benchmarks/costmodel_spu.py DIR > benchmarks/results/costmodel_spu.md

DIR holds `secure-eval` results of real SPU parties (`benchmarks/spu_gpt2.py measure` writes one
JSON per run: a GPT-2-small-shaped checkpoint with random weights, T=128, its `run` naming the
variant, n_layer, vocabulary and protocol). For each run this prints, per operator category, the
measured bytes (all parties) and rounds (send actions of the busiest party) next to the prediction
of `pi-lnfree cost` (`costmodel.predict` of the same config from the shipped calibration of that
profile). A config the calibration does not cover (for instance a product that SPU tiles, under a
profile calibrated without tiled products) is listed with the reason. No parties run here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pi_lnfree.config import make_config
from pi_lnfree.errors import UserError
from pi_lnfree.secure.costmodel import load_calibration, predict
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile

FIELDS = ("bytes", "rounds")


def _rel(p: float, m: float) -> str:
    return "0" if p == m else ("n/a" if m == 0 else f"{(p - m) / m:+.2e}")


def _runs(folder: Path) -> list[tuple[Path, dict]]:
    runs = [(p, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
    key = lambda pr: (pr[1]["run"]["protocol"], pr[1]["run"]["n_layer"], pr[1]["run"]["variant"])  # noqa: E731
    return sorted(runs, key=key)


def _rows(measured: dict, predicted: dict) -> list[str]:
    out = []
    for c in [*CATEGORIES, "total"]:
        if c == "total":
            m = {f: sum(measured[k][f] for k in CATEGORIES) for f in FIELDS}
            p = {f: sum(predicted[k][f] for k in CATEGORIES) for f in FIELDS}
        else:
            m, p = measured[c], predicted[c]
        out.append(f"| {c} | {m['bytes']:,.0f} | {p['bytes']:,.0f} | {_rel(p['bytes'], m['bytes'])} "
                   f"| {m['rounds']:,.1f} | {p['rounds']:,.1f} | {_rel(p['rounds'], m['rounds'])} |")
    return out


def main(folder: str) -> None:
    print("# The SPU cost model vs real SPU runs: GPT-2-small shape, T=128, random weights\n")
    print(f"Made by `PYTHONPATH=$PWD python benchmarks/costmodel_spu.py {folder} > "
          "benchmarks/results/costmodel_spu.md`. Measured: one `secure-eval` per run under real SPU "
          "parties (`benchmarks/spu_gpt2.py measure`). Predicted: `predict(make_config('gpt2-small', "
          "variant, vocab_size=V, n_layer=L), load_profile(protocol), 128)`, i.e. `pi-lnfree cost` with "
          "the shipped calibration of that profile. Bytes: all parties; rounds: send actions of the "
          "busiest party, per category (the sum of each call's busiest party in the prediction).\n")
    print("The runs revealed the logits with the earlier framing (a small header per party on top of the "
          "ring elements); SPU's reveal now sends bare ring elements, as the calibration measured, so the "
          "measured `lm_head` bytes carry a few dozen bytes per run that the prediction does not.\n")
    cals: dict[str, object] = {}
    sections, overview = [], []
    for path, res in _runs(Path(folder)):
        run = res["run"]
        name = f"{run['protocol']} {run['variant']}, {run['n_layer']} layer(s), vocabulary {run['vocab']:,}"
        out = [f"## {name} (`{path.name}`)\n"]
        profile = load_profile(run["protocol"])
        cfg = make_config("gpt2-small", run["variant"], vocab_size=run["vocab"], n_layer=run["n_layer"])
        try:
            cal = cals.get(run["protocol"]) or cals.setdefault(run["protocol"], load_calibration(profile))
            pred = predict(cfg, profile, int(res["seq_len"]), cal=cal)["ops"]
        except UserError as e:
            sections.append("\n".join([*out, f"Not predicted: {e}\n"]))
            overview.append(f"| {name} | not predicted | | | | |")
            continue
        out.append(f"Calibration: {'exact' if cal.exact else 'least-squares fit'}, made {cal.meta.get('created')}.\n")
        out.append("| category | measured bytes | predicted bytes | rel. diff | measured rounds | predicted rounds "
                   "| rel. diff |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        out += _rows(res["ops"], pred)
        sections.append("\n".join(out) + "\n")
        tot = {f: (sum(res["ops"][k][f] for k in CATEGORIES), sum(pred[k][f] for k in CATEGORIES)) for f in FIELDS}
        worst = max((abs(pred[k]["bytes"] / res["ops"][k]["bytes"] - 1) for k in CATEGORIES if res["ops"][k]["bytes"]),
                    default=0.0)
        overview.append(f"| {name} | {_rel(tot['bytes'][1], tot['bytes'][0])} | {_rel(tot['rounds'][1], tot['rounds'][0])} "
                        f"| {worst:.2e} | {tot['bytes'][0]:,.0f} | {tot['rounds'][0]:,.0f} |")
    print("SEMI2K: every category's bytes and rounds are predicted exactly, but for the LM head's bytes, 40 to 43 "
          "bytes short of the measured ones (the old reveal framing), in all runs; this includes the 12-layer runs "
          "at vocabulary 52,000, where SPU tiles the LM head product (2 x 2 blocks: the weight is opened twice, "
          "1.388 GB where the untiled rule gives 0.747 GB, and 3 more send actions) and the embedding product "
          "(2 inner blocks: same bytes, 1 more send action); the SEMI2K calibration measures one tiled call of "
          "each. CHEETAH: a least-squares fit of bytes and send actions (HE packing into fixed-size ciphertexts is "
          "not linear in the shape, and the calibration's products are smaller than GPT-2's; silent-OT refills "
          "are charged to whichever operator drains the pool), so totals are close and categories are not; CHEETAH "
          "calibrates no tiled product, so at vocabulary 52,000 `cost` refuses it and says why.\n")
    print("## Overview\n")
    print("| run | total bytes rel. diff | total rounds rel. diff | largest category bytes rel. diff "
          "| measured bytes | measured rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(overview) + "\n")
    print("\n".join(sections))

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/costmodel_spu.py DIR_OF_SPU_GPT2_RESULTS")
    main(sys.argv[1])
