#!/usr/bin/env bash
# The paper's matrix with pi-lnfree: training, report tables, and cost-model tables.
#
#   benchmarks/paper_matrix.sh cost        # CPU, minutes: cost-model tables for GPT-2-small and
#                                          # Pythia-70M at T=128 and T=256 -> benchmarks/results/paper_cost_tables.{md,csv}
#   benchmarks/paper_matrix.sh cpu         # CPU, ~1 h on 2 shared cores: the four paper variants on
#                                          # training/cpu.toml + report -> reports/cpu-matrix/ (CPU_STEPS=200:
#                                          # the cost tables; too short for quality or entropy, where LN-free
#                                          # attention is still uniform: benchmarks/cpu_matrix.sh trains 2,000 steps)
#   benchmarks/paper_matrix.sh gpu-data    # needs the Hugging Face hub: CodeParrot at T=128 and T=256
#   benchmarks/paper_matrix.sh gpu-train   # GPU: every variant of training/paper-variants.toml for
#                                          # GPT-2 (T=128) and Pythia-70M (T=128, T=256)
#   benchmarks/paper_matrix.sh gpu-report  # report tables/figures of the GPU runs (cost model for MPC cost)
#
# Environment: PY (default .venv/bin/python), PROTOCOL (default protocols/crypten-2pc-ttp.toml),
# CPU_STEPS (default 200), TORCHRUN (e.g. "torchrun --nproc-per-node 8" for multi-GPU training),
# TRAIN_SETS (extra --set items for every GPU run; train.batch_size is per GPU, so with 8 GPUs use
# TRAIN_SETS="--set train.batch_size=16" to keep 16 x 4 x 8 = 512 sequences per step).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PI="$PY -m pi_lnfree.cli"
PROTOCOL=${PROTOCOL:-protocols/crypten-2pc-ttp.toml}
CPU_STEPS=${CPU_STEPS:-200}
PAPER=(sm-ln-g sm-ln-r sm-g sm-r)
CODEPARROT="hub:huggingface-course/codeparrot-ds-train,huggingface-course/codeparrot-ds-valid"
TOKENIZER="hub:huggingface-course/code-search-net-tokenizer"  # 52,000 tokens

cost() {
  # The same predictions one at a time, e.g.:
  #   pi-lnfree cost --preset gpt2-small --variant sm-r --vocab-size 52000 --protocol $PROTOCOL --seq-len 128 --json
  #   pi-lnfree cost --preset pythia-70m --variant sm-r --vocab-size 52096 --set model.block_size=256 --protocol $PROTOCOL --seq-len 256
  "$PY" - "$PROTOCOL" <<'EOF'
import sys
from pathlib import Path
from pi_lnfree.report import preset_cost_runs
from pi_lnfree.report_output import write_cost_tables
from pi_lnfree.secure.costmodel import calibration_path

protocol = sys.argv[1]
variants = ["sm-ln-g", "sm-ln-r", "sm-g", "sm-r"]
# GPT-2 on CodeParrot uses the 52,000-token code-search-net tokenizer; Pythia pads it to a multiple of 128.
groups = [preset_cost_runs(p, variants, T, protocol, v)
          for p, v in (("gpt2-small", 52000), ("pythia-70m", 52096)) for T in (128, 256)]
header = ["# Predicted private-inference cost at paper scale (cost model)", "",
          f"Protocol profile `{protocol}` (its calibration `{calibration_path(protocol).name}`), "
          "networks from `protocols/networks.toml` (LAN 3 Gbit/s, 0.3 ms RTT; WAN 100 Mbit/s, 80 ms RTT).",
          "One forward pass of one sequence of T tokens, embedding and LM head included; bytes sent by both parties "
          "together; latency = estimated local compute (calibration machine) + rounds x RTT + bytes / bandwidth. "
          "Savings (x) = SM+LN+G cost / this configuration's cost.", "",
          "Reproduce: `benchmarks/paper_matrix.sh cost`.", ""]
write_cost_tables(groups, Path("benchmarks/results/paper_cost_tables.md"),
                  Path("benchmarks/results/paper_cost_tables.csv"), header)
print("wrote benchmarks/results/paper_cost_tables.md and .csv")
EOF
}

cpu() {
  # Data folder of training/cpu.toml (data/stdlib-4096) is prepared on first use.
  for v in "${PAPER[@]}"; do
    $PI train --recipe training/cpu.toml --set model.variant="$v" --set train.max_steps="$CPU_STEPS" \
      --set train.entropy_interval=20 --set train.threads=1 --out runs/cpu/"$v"
  done
  $PI report runs/cpu/sm-ln-g runs/cpu/sm-ln-r runs/cpu/sm-g runs/cpu/sm-r --out reports/cpu-matrix \
    --protocol "$PROTOCOL" --secure-seq-len 64 --samples 1
}

gpu_data() {
  $PI data prepare --source "$CODEPARROT" --tokenizer "$TOKENIZER" --seq-len 128 --out data/codeparrot
  $PI data prepare --source "$CODEPARROT" --tokenizer "$TOKENIZER" --seq-len 256 --out data/codeparrot-256
}

gpu_train() {
  local T=${TORCHRUN:-}
  local TRAIN="$PI train"
  [ -n "$T" ] && TRAIN="$T -m pi_lnfree.cli train"
  TRAIN="$TRAIN ${TRAIN_SETS:-}"
  # GPT-2 small (12/12/768), T=128: 512 sequences per step, one epoch, bf16 (recipe: training/gpt2-codeparrot.toml)
  $TRAIN --matrix training/paper-variants.toml --recipe training/gpt2-codeparrot.toml --out runs/gpt2
  # Pythia-70M shape, vocabulary padded to a multiple of 128, T=128 and T=256
  $TRAIN --matrix training/paper-variants.toml --recipe training/pythia-70m-codeparrot.toml \
    --set model.vocab_size=52096 --out runs/pythia70m-T128
  $TRAIN --matrix training/paper-variants.toml --recipe training/pythia-70m-codeparrot.toml \
    --set model.vocab_size=52096 --set data.dir=data/codeparrot-256 --set data.seq_len=256 --out runs/pythia70m-T256
}

gpu_report() {
  # Eval PPL on the whole validation split, entropy on 8 x 16 sequences, MPC cost from the cost
  # model at the training context (a measured secure-eval of GPT-2-small takes hours on a CPU:
  # add --secure-seq-len 128 to measure it anyway).
  $PI report runs/gpt2/* --out reports/gpt2 --protocol "$PROTOCOL" --secure-seq-len 0
  $PI report runs/pythia70m-T128/* --out reports/pythia70m-T128 --protocol "$PROTOCOL" --secure-seq-len 0
  $PI report runs/pythia70m-T256/* --out reports/pythia70m-T256 --protocol "$PROTOCOL" --secure-seq-len 0
}

case "${1:-}" in
  cost) cost ;;
  cpu) cpu ;;
  gpu-data) gpu_data ;;
  gpu-train) gpu_train ;;
  gpu-report) gpu_report ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
