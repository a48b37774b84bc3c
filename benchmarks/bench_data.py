"""Tokens/s of `pi-lnfree data prepare` vs a plain single-threaded `tokenizer.encode` loop.

Three timings over the same corpus (the running interpreter's standard library):
  1. `prepare` end to end with tokenizer training (`--vocab-size N`),
  2. `prepare` with that tokenizer given (`--tokenizer`): read through `datasets`, parallel
     `encode_batch`, chunk, write shards,
  3. a plain loop: read each file, `tokenizer.encode(text)`, count the ids (one thread, nothing written).
(2) and (3) tokenize exactly the same texts, which the script checks by comparing token totals.

    .venv/bin/python benchmarks/bench_data.py [--vocab-size 32768] [--limit-mb MB] [--repeat 3]
                                              [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from pi_lnfree.corpus import list_files, stdlib_root
from pi_lnfree.data import load_data_folder, prepare


def plain_loop(tok, limit_bytes: int | None) -> tuple[int, int, int, float, float]:
    """(files, text bytes, tokens, wall s, CPU s) of a single-threaded read + encode loop over the stdlib."""
    paths = list_files(stdlib_root(), "*.py", exclude_dirs=("site-packages", "__pycache__"))
    files = n_bytes = tokens = 0
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        if limit_bytes is not None and n_bytes >= limit_bytes:
            break
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text:
            continue
        files += 1
        n_bytes += len(text.encode("utf-8"))
        tokens += len(tok.encode(text, add_special_tokens=False).ids)
    return files, n_bytes, tokens, time.perf_counter() - start, time.process_time() - cpu


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of the whole process: every thread)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--limit-mb", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs of (2) and (3); the best counts")
    parser.add_argument("--report", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    limit_bytes = int(args.limit_mb * 1e6) if args.limit_mb is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        m1, t1, c1 = timed(prepare, "python-stdlib", trained, vocab_size=args.vocab_size, limit_mb=args.limit_mb)
        tok = load_data_folder(trained).tokenizer()
        # (2) and (3) alternate `--repeat` times; the best wall time of each counts (shared machines)
        t2 = t3 = c2 = c3 = float("inf")
        for i in range(args.repeat):
            m2, wall, cpu = timed(prepare, "python-stdlib", Path(tmp) / f"given{i}",
                                  tokenizer=trained / "tokenizer.json", limit_mb=args.limit_mb)
            t2, c2 = min(t2, wall), min(c2, cpu)
            files, n_bytes, tokens, wall, cpu = plain_loop(tok, limit_bytes)
            t3, c3 = min(t3, wall), min(c3, cpu)

    total = sum(m2["tokens"].values())
    if total != tokens or sum(m2["files"].values()) != files:
        sys.exit(f"mismatch: prepare saw {sum(m2['files'].values())} files / {total} tokens, "
                 f"the loop {files} / {tokens}")
    rows = [
        ("(1) prepare, training the tokenizer", t1, c1, sum(m1["tokens"].values())),
        ("(2) prepare, given tokenizer", t2, c2, total),
        ("(3) plain encode loop, 1 thread", t3, c3, tokens),
    ]
    load = os.getloadavg()
    lines = [
        f"corpus: python-stdlib ({platform.python_version()}), {files} files, {n_bytes / 1e6:.1f} MB, "
        f"vocab {m1['vocab_size']}, {tokens:,} tokens",
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"best of {args.repeat} for (2) and (3); CPU s counts every thread of the process",
        "",
        "| method | wall s | tokens/s (wall) | vs plain loop | CPU s | tokens per CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, cpu, n in rows:
        lines.append(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {(n / seconds) / (tokens / t3):.2f}x "
                     f"| {cpu:.2f} | {n / cpu:,.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.report is not None:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
