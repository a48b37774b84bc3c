#!/usr/bin/env bash
# GPU smoke + speed check of the paper's GPT-2 recipe (12 layers, 12 heads, d=768, T=128, 512
# sequences per step, bf16 autocast, torch.compile) for SM+LN+G and SM+R: trains a few hundred
# steps on small local data (the Python standard library, byte-level BPE) and prints tokens/s and
# MFU (against the GPU's dense bf16 peak, see GPU_PEAK_FLOPS in pi_lnfree/runtime.py).
#
#   benchmarks/gpu_smoke.sh [STEPS] [OUT]      (defaults: 300 steps, /tmp/pi-lnfree-gpu-smoke)
#   NPROC=8 benchmarks/gpu_smoke.sh            (DDP with torchrun; batch_size is per GPU)
#   VOCAB=32768 BATCH=128 ACCUM=4 PRECISION=bf16 COMPILE=true  (overridable)
#   DEVICE=cpu PRESET=tiny VOCAB=512 BATCH=8 ACCUM=1 PRECISION=fp32 COMPILE=false \
#     benchmarks/gpu_smoke.sh 20 /tmp/smoke   (a dry run of the script itself on a CPU)
# Target: MFU >= 40% on an H200. Results go to OUT/summary.json; record them in
# benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
OUT=${2:-/tmp/pi-lnfree-gpu-smoke}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
VOCAB=${VOCAB:-32768}; BATCH=${BATCH:-128}; ACCUM=${ACCUM:-4}; NPROC=${NPROC:-1}
PRECISION=${PRECISION:-bf16}; COMPILE=${COMPILE:-true}; DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-gpt2-small}
DATA="$OUT/data-stdlib-$VOCAB"
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), torch.__version__)"
fi
"$PY" -m pi_lnfree.cli data prepare --source python-stdlib --vocab-size "$VOCAB" --out "$DATA"

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m pi_lnfree.cli)
else
  LAUNCH=("$PY" -m pi_lnfree.cli)
fi
for V in sm-ln-g sm-r; do
  rm -rf "$OUT/$V"
  "${LAUNCH[@]}" train --recipe training/gpt2-codeparrot.toml --out "$OUT/$V" \
    --set data.dir="$DATA" --set model.variant="$V" --set train.max_steps="$STEPS" \
    --set model.preset="$PRESET" --set train.device="$DEVICE" \
    --set train.batch_size="$BATCH" --set train.grad_accum="$ACCUM" --set train.precision="$PRECISION" \
    --set train.compile="$COMPILE" --set train.log_interval=25 --set train.eval_interval=0 \
    --set train.eval_batches=4 --set train.ckpt_interval=0 --set train.entropy_interval=100 \
    --set train.progress=false
done

"$PY" - "$OUT" "$STEPS" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out, steps = Path(sys.argv[1]), int(sys.argv[2])
summary = {}
for v in ("sm-ln-g", "sm-r"):
    recs = [json.loads(l) for l in (out / v / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "tokens_per_s" in r and r["step"] > min(100, steps // 3)]  # after compile/warmup
    train = train or [r for r in recs if "tokens_per_s" in r]
    ev = [r for r in recs if "eval_loss" in r]
    s = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
         "mfu": statistics.median(r["mfu"] for r in train) if all("mfu" in r for r in train) else None,
         "final_loss": [r for r in recs if "loss" in r][-1]["loss"],
         "eval_loss": ev[-1]["eval_loss"] if ev else None, "steps": steps}
    summary[v] = s
    mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a (unknown GPU peak: set train.peak_flops)"
    print(f"{v:8s} tokens/s {s['tokens_per_s']:,.0f}  MFU {mfu}  loss {s['final_loss']:.3f}")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"wrote {out / 'summary.json'}")
PYEOF
