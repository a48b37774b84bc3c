"""A run's history: RUN_DIR/metrics.jsonl (one JSON object per line) and optional TensorBoard.

Every line has "step" and "tokens"; train lines add loss, lr, grad_norm, tokens_per_s (and mfu
on GPU); eval lines add eval_loss and eval_ppl; entropy lines add entropy ([[per head] per
layer]) and slopes. On --resume the lines written after the checkpoint being resumed are
dropped, so the history of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pi_lnfree.files import write_text
from pi_lnfree.progress import console


def _finite_or_str(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends JSON lines to RUN_DIR/metrics.jsonl; optionally mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, keep_until_step: int, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.latest: dict[str, Any] = {}  # the last loss / eval_loss / eval_ppl among the kept lines
        self._truncate(keep_until_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                console.print("[yellow]train.tensorboard: tensorboard is not installed; writing metrics.jsonl only")
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=keep_until_step + 1)

    def _truncate(self, keep_until_step: int) -> None:
        """Keep only whole lines with step <= keep_until_step (rewritten atomically)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if isinstance(rec, dict) and rec.get("step", 0) <= keep_until_step:
                kept.append(line)
                self.latest.update({k: rec[k] for k in ("loss", "eval_loss", "eval_ppl") if k in rec})
        write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold step and tokens) and flush it to disk."""
        clean = {k: _finite_or_str(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step",) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            for i, slope in enumerate(record.get("slopes") or []):
                self._tb.add_scalar(f"slope/{i}", slope, step)
            for layer, heads in enumerate(record.get("entropy") or []):
                self._tb.add_scalar(f"entropy_layer/{layer}", sum(heads) / len(heads), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
