#!/usr/bin/env bash
# The paper's comparison at CPU scale, at a budget where LN-free models have learned attention.
#
#   benchmarks/cpu_matrix.sh train [NAME...]  # the runs below (all, or the named ones), in the
#                                             # order listed (resumable: a finished run is skipped,
#                                             # an interrupted one continues from its ckpt.pt)
#   benchmarks/cpu_matrix.sh report           # the reports over whatever has finished
#   benchmarks/cpu_matrix.sh all              # train, then report
#
# Runs (training/cpu.toml, cpu-small: 4 layers x 4 heads, d=128, T=128, batch 32, AdamW 1e-3,
# 5% warmup, linear decay; STEPS steps each), most important first:
#   sm-g sm-r sm-ln-g sm-ln-r                 the paper's four configurations, seed 1337
#   sm-r-entreg sm-dyt-r sm-r-distilled       beyond the paper (benchmarks/beyond_matrix.sh): SM+R
#   sm-r-entreg-weak sm-dyt-r-seed2           with entropy regularization (lambda 4e-5, and 4e-6),
#   sm-dyt-r-noscale sm-dyt-r-a05             DyT in place of the norms (with the embedding scale,
#                                             seeds 1337 and 1338; without it; without it and the
#                                             paper's alpha0 0.5), SM+R distilled from sm-ln-g
#   sm-g-seed2 sm-r-seed2 sm-g-seed3 sm-r-seed3  seeds 1338 and 1339: the seed spread of SM+R - SM+G
#   sm-ln-g-seed2 sm-ln-r-seed2               seed 1338 of the LayerNorm pair (SM+LN+R vs SM+LN+G)
#   sm-g-plain sm-r-plain                     model.residual_init="plain": how much of the gap is the init
#   sm-lrelu-layer sm-lrelu-global            learnable leaky-ReLU slopes (per layer / one shared),
#   sm-lrelu-layer-s02 sm-lrelu-global-s02    from the default 0.01 and from 0.2: do they drift to zero?
#   heads-sm-g heads-sm-r heads-sm-ln-g       cpu-heads (6 layers x 8 heads = 48 heads, d=128): overload
#                                             fractions with enough heads to mean something
#
# Environment: PY (default .venv/bin/python), OUT (default runs/cpu-matrix), DATA (default
# data/stdlib-4096, prepared on first use), STEPS (default 2000), HEADS_STEPS (default STEPS),
# THREADS (torch threads per run, default 2), PROTOCOL (default protocols/crypten-2pc-ttp.toml),
# SECURE_T (measured secure-eval length for the four paper runs' cost report, default 64; 0 skips),
# REPORT (default OUT/report), HOLD (default OUT/hold: while this file exists, the next run waits
# to start, so that timed benchmarks can have a quiet machine between runs). Each run's `pi-lnfree train --json` summary goes to
# OUT/NAME/train.json and its wall time to OUT/walltimes.tsv. Reports: REPORT (the finished runs
# except the beyond-the-paper ones, which benchmarks/beyond_matrix.sh reports; cost model at T=128) and REPORT-secure (the four paper runs, measured and predicted cost at SECURE_T).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PI="$PY -m pi_lnfree.cli"
OUT=${OUT:-runs/cpu-matrix}
DATA=${DATA:-data/stdlib-4096}
STEPS=${STEPS:-2000}
HEADS_STEPS=${HEADS_STEPS:-$STEPS}
THREADS=${THREADS:-2}
PROTOCOL=${PROTOCOL:-protocols/crypten-2pc-ttp.toml}
SECURE_T=${SECURE_T:-64}
REPORT=${REPORT:-$OUT/report}
HOLD=${HOLD:-$OUT/hold}

# name | extra --set items (space separated)
RUNS=(
  "sm-g|model.variant=sm-g"
  "sm-r|model.variant=sm-r"
  "sm-ln-g|model.variant=sm-ln-g"
  "sm-ln-r|model.variant=sm-ln-r"
  "sm-r-entreg|model.variant=sm-r train.entropy_reg=4e-5"
  "sm-dyt-r|model.variant=sm-dyt-r"
  "sm-dyt-r-seed2|model.variant=sm-dyt-r train.seed=1338"
  "sm-dyt-r-noscale|model.variant=sm-dyt-r model.dyt_embed_scale=false"
  "sm-dyt-r-a05|model.variant=sm-dyt-r model.dyt_alpha=0.5 model.dyt_embed_scale=false"
  "sm-r-distilled|model.variant=sm-r train.distill_from=\"$OUT/sm-ln-g\" train.distill_temperature=2.0 train.distill_weight=0.5"
  "sm-r-entreg-weak|model.variant=sm-r train.entropy_reg=4e-6"
  "sm-g-seed2|model.variant=sm-g train.seed=1338"
  "sm-r-seed2|model.variant=sm-r train.seed=1338"
  "sm-g-seed3|model.variant=sm-g train.seed=1339"
  "sm-r-seed3|model.variant=sm-r train.seed=1339"
  "sm-ln-g-seed2|model.variant=sm-ln-g train.seed=1338"
  "sm-ln-r-seed2|model.variant=sm-ln-r train.seed=1338"
  "sm-g-plain|model.variant=sm-g model.residual_init=\"plain\""
  "sm-r-plain|model.variant=sm-r model.residual_init=\"plain\""
  "sm-lrelu-layer|model.variant=sm-lrelu-layer"
  "sm-lrelu-global|model.variant=sm-lrelu-global"
  "sm-lrelu-layer-s02|model.variant=sm-lrelu-layer model.leaky_slope=0.2"
  "sm-lrelu-global-s02|model.variant=sm-lrelu-global model.leaky_slope=0.2"
  "heads-sm-g|model.preset=\"cpu-heads\" model.variant=sm-g train.max_steps=$HEADS_STEPS"
  "heads-sm-r|model.preset=\"cpu-heads\" model.variant=sm-r train.max_steps=$HEADS_STEPS"
  "heads-sm-ln-g|model.preset=\"cpu-heads\" model.variant=sm-ln-g train.max_steps=$HEADS_STEPS"
)
PAPER=(sm-ln-g sm-ln-r sm-g sm-r)
# trained here, reported by benchmarks/beyond_matrix.sh
BEYOND=(sm-r-entreg sm-dyt-r sm-r-distilled sm-r-entreg-weak sm-dyt-r-seed2 sm-dyt-r-noscale sm-dyt-r-a05)

train_all() {  # optional run names restrict the runs
  mkdir -p "$OUT"
  for spec in "${RUNS[@]}"; do
    local name=${spec%%|*} extra=${spec#*|} dir="$OUT/${spec%%|*}"
    if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
    if [ -f "$dir/train.json" ]; then echo "== $name: finished, skipped"; continue; fi
    while [ -e "$HOLD" ]; do sleep 10; done
    local sets=(--set data.dir="$DATA" --set train.max_steps="$STEPS" --set train.threads="$THREADS"
                --set train.eval_interval=100 --set train.entropy_interval=50 --set train.progress=false)
    for s in $extra; do sets+=(--set "$s"); done
    local resume=()
    [ -f "$dir/ckpt.pt" ] && resume=(--resume)
    echo "== $name: $(date -u +%FT%TZ) start ${resume[*]:-fresh}"
    local t0; t0=$(date +%s)
    $PI train --recipe training/cpu.toml "${sets[@]}" "${resume[@]}" --out "$dir" --json > "$dir.train.json.tmp"
    mv "$dir.train.json.tmp" "$dir/train.json"
    printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "${resume[*]:-fresh}" >> "$OUT/walltimes.tsv"
    echo "== $name: $(date -u +%FT%TZ) done"
  done
}

finished() {  # names of finished runs, in the order of RUNS, restricted to the arguments when given
  for spec in "${RUNS[@]}"; do
    local name=${spec%%|*}
    if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
    [ -f "$OUT/$name/train.json" ] && echo "$OUT/$name"
  done
  return 0
}

report_all() {
  local matrix=() spec name
  for spec in "${RUNS[@]}"; do
    name=${spec%%|*}
    [[ " ${BEYOND[*]} " == *" $name "* ]] || matrix+=("$name")
  done
  mapfile -t done_runs < <(finished "${matrix[@]}")
  [ ${#done_runs[@]} -gt 0 ] || { echo "no finished runs in $OUT"; return 0; }
  $PI report "${done_runs[@]}" --out "$REPORT" --protocol "$PROTOCOL" --secure-seq-len 0
  mapfile -t paper_runs < <(finished "${PAPER[@]}")
  if [ "$SECURE_T" -gt 0 ] && [ ${#paper_runs[@]} -gt 0 ]; then
    $PI report "${paper_runs[@]}" --out "$REPORT-secure" --protocol "$PROTOCOL" \
      --secure-seq-len "$SECURE_T" --cost-seq-len "$SECURE_T" --samples 1
  fi
}

case "${1:-}" in
  train) shift; train_all "$@" ;;
  report) report_all ;;
  all) train_all; report_all ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
