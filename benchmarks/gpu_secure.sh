#!/usr/bin/env bash
# Secure evaluation on a CUDA GPU (CrypTen's CUDA path: int64 shares as CUDALongTensor, whose
# matmuls CrypTen itself splits into float64 limbs on cuBLAS): GPT-2 small (12 layers, 12 heads,
# d=768, vocabulary 50257) at T=128, SM+LN+G and SM+R, both parties and the TTP dealer as local
# processes on GPU 0, protocols/crypten-2pc-ttp.toml. Records per-operator seconds, bytes and
# rounds of each run with `secure-eval --device cuda --json`.
#
#   benchmarks/gpu_secure.sh [OUT]        (default OUT: /tmp/pi-lnfree-gpu-secure)
#   SEQ_LEN=128 SAMPLES=1 PROTOCOL=protocols/crypten-2pc-ttp.toml DEVICES=cuda  (overridable)
#   DEVICES="cuda cpu" also runs the same two evaluations on the CPU for comparison (slow);
#   PRESET=tiny VOCAB=512 SEQ_LEN=16 DEVICES=cpu is a quick dry run of the script without a GPU.
#
# Costs do not depend on the weights, so the checkpoints are randomly initialised (seed 0);
# fidelity numbers of such a model are reported but mean little. Output: OUT/<variant>-<device>.json
# (the secure-eval result) and OUT/summary.md (per-operator table), which is also copied to
# benchmarks/results/gpu_secure.md. Needs a CUDA build of torch in .venv (or python3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pi-lnfree-gpu-secure}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SEQ_LEN=${SEQ_LEN:-128}; SAMPLES=${SAMPLES:-1}; DEVICES=${DEVICES:-cuda}
PRESET=${PRESET:-gpt2-small}; VOCAB=${VOCAB:-50257}
PROTOCOL=${PROTOCOL:-protocols/crypten-2pc-ttp.toml}
TIMEOUT=${TIMEOUT:-900}
mkdir -p "$OUT"
if [[ " $DEVICES " == *" cuda "* ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), torch.__version__)"
fi
"$PY" -c "from pi_lnfree.secure.crypten_compat import get_crypten; print('crypten', get_crypten().__version__)"

VARIANTS=(sm-ln-g sm-r)
for V in "${VARIANTS[@]}"; do
  "$PY" - "$OUT/$V.pt" "$V" "$PRESET" "$VOCAB" <<'PYEOF'
import sys
import torch
from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.config import make_config
from pi_lnfree.model import GPT
path, variant, preset, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = make_config(preset, variant, vocab_size=vocab)
torch.manual_seed(0)
save_checkpoint(path, GPT(cfg).state_dict(), cfg)
print(f"checkpoint {path}: {variant}, {sum(p.numel() for p in GPT(cfg).parameters()) / 1e6:.1f}M parameters")
PYEOF
done

for D in $DEVICES; do
  for V in "${VARIANTS[@]}"; do
    echo "== secure-eval $V on $D, $PRESET, T=$SEQ_LEN" >&2
    start=$(date +%s)
    if ! "$PY" -m pi_lnfree.cli secure-eval "$OUT/$V.pt" --protocol "$PROTOCOL" \
        --seq-len "$SEQ_LEN" --samples "$SAMPLES" --device "$D" --timeout "$TIMEOUT" --json \
        > "$OUT/$V-$D.json" 2> "$OUT/$V-$D.log"; then
      tail -n 30 "$OUT/$V-$D.log" >&2
      echo "secure-eval $V on $D failed (log: $OUT/$V-$D.log)" >&2
      exit 1
    fi
    echo "   done in $(( $(date +%s) - start )) s" >&2
  done
done

"$PY" - "$OUT" "$SEQ_LEN" "$PROTOCOL" "$PRESET" $DEVICES <<'PYEOF'
import json, pathlib, sys, time
import torch
out, seq_len, protocol, preset, devices = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
lines = [
    f"# Secure evaluation ({', '.join(devices)}): {preset}, T={seq_len}, {protocol}",
    "",
    f"Command: `benchmarks/gpu_secure.sh` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
    f"{gpu}, torch {torch.__version__}. Random-init checkpoints (costs do not depend on weights).",
    "",
    "Per-operator local seconds (slower party), per sequence; MB = bytes both parties send.",
    "",
]
header = None
for dev in devices:
    for v in ("sm-ln-g", "sm-r"):
        r = json.loads((out / f"{v}-{dev}.json").read_text())
        cats = list(r["ops"])
        if header is None:
            header = ["variant", "device", *cats, "total s", "wall s", "MB", "rounds", "LAN s", "WAN s", "max |logit err|"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        fid = r.get("fidelity") or {}
        cells = [r["variant"], dev, *[f"{r['ops'][c]['seconds']:.2f}" for c in cats],
                 f"{r['total']['seconds']:.2f}", f"{r['wall_seconds']:.1f}", f"{r['total']['bytes'] / 1e6:,.0f}",
                 f"{r['total']['rounds']:,.0f}", f"{r['network']['lan']['seconds']:.1f}",
                 f"{r['network']['wan']['seconds']:.1f}", f"{fid.get('max_abs_logit_error', float('nan')):.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
if "cuda" in devices and preset == "gpt2-small":  # only real GPU runs go into the results folder
    pathlib.Path("benchmarks/results/gpu_secure.md").write_text(text)
print(text)
PYEOF
