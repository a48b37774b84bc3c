"""Secure evaluation with stock CrypTen vs the float64-limb int64 matmul, alternating in one run.

Two parts, each alternating stock, limbs, stock, limbs, ... so that load on the machine hits
both alike:

1. `matmuls`: the secret-shared matmuls of one GPT-2-small block at T=128 (QKV, attention
   scores and mix, out-projection, FFN up and down), both operands secret, under two real
   CrypTen parties (forked processes over gloo, TFP provider). Per product: wall seconds
   (slower party), local compute seconds (wall minus the time inside communication calls),
   bytes and rounds of party 0.
2. `forward`: the whole secure forward of `pi-lnfree secure-eval` (two party processes plus the
   TTP dealer, protocols/crypten-2pc-ttp.toml) at T=128 for a GPT-2-small-shaped model with one
   block (SM+LN+G, 512-token vocabulary so that the block dominates) and for the demo model
   (cpu-small: 4 layers, d=128, vocabulary 4096). Stock vs limbs is switched with
   PI_LNFREE_FAST_MATMUL=stock|limbs, which every party and the dealer inherit. Reports the
   run's wall seconds, the metered forward seconds per operator category, bytes and rounds.

Bytes and rounds must be identical between the two paths; the script checks it and says so.

    .venv/bin/python benchmarks/bench_secure.py [--rounds 2] [--skip-matmuls] [--skip-forward]
        [--models block,demo] [--out benchmarks/results/bench_secure.md]

3. `--profile` (instead of 1 and 2): one secure forward per model with both parties under
   torch.profiler; local work by kind (int64 matmul, random ring elements, elementwise
   arithmetic, bitwise/comparison circuits, copies, casts, communication, Python overhead).

    .venv/bin/python benchmarks/bench_secure.py --profile [--models block] [--profile-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matmul import SHAPES as MATMUL_SHAPES  # noqa: E402  (the GPT-2 small matmul shapes)

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "crypten-2pc-ttp"  # a shipped protocol profile
MATMUL_CATEGORIES = ("embedding", "linear", "attention", "lm_head")

# GPT-2 small at T=128: (name, secret left shape, secret right shape)
BLOCK_MATMULS = [shape for shape in MATMUL_SHAPES if not shape[0].startswith("lm-head")]
MODELS = {
    "block": dict(preset="gpt2-small", variant="sm-ln-g", vocab_size=512, n_layer=1,
                  label="GPT-2-small block (1 layer, d=768, 12 heads, vocab 512)"),
    "demo": dict(preset="cpu-small", variant="sm-ln-g", vocab_size=4096,
                 label="demo model (cpu-small: 4 layers, d=128, vocab 4096)"),
}
MODES = ("stock", "limbs")


# --------------------------------------------------------------------------- part 1: matmuls


def _matmul_party(repeats: int) -> list[dict]:
    """Inside each forked party: time every block matmul `repeats` times (best kept)."""
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    comm = crypten.communicator.get()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, sa, sb in BLOCK_MATMULS:
        x = crypten.cryptensor(torch.randn(sa, generator=gen), src=0)
        w = crypten.cryptensor(torch.randn(sb, generator=gen), src=1)
        best = None
        for _ in range(repeats):
            comm.barrier()  # start together: the wall time then excludes the peer's lag
            comm.reset_communication_stats()
            t0 = time.perf_counter()
            x.matmul(w)
            wall = time.perf_counter() - t0
            st = comm.get_communication_stats()
            row = {"product": name, "wall_s": wall, "compute_s": wall - st["time"],
                   "bytes": int(st["bytes"]), "rounds": int(st["rounds"])}
            if best is None or row["wall_s"] < best["wall_s"]:
                best = row
        rows.append(best)
    return rows


def bench_matmuls(rounds: int, repeats: int) -> list[dict]:
    """Alternate stock and limbs; per mode and product, the median over rounds of the slower party."""
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    crypten.cfg.communicator.verbose = True
    crypten.cfg.mpc.provider = "TFP"
    samples: dict[str, dict[str, list[dict]]] = {m: {} for m in MODES}
    try:
        for r in range(rounds):
            for mode in MODES:
                crypten_compat.install_fast_matmul(mode == "limbs", force=True)
                parties = crypten.mpc.run_multiprocess(world_size=2)(_matmul_party)(repeats)
                if parties is None:
                    raise SystemExit("a party failed (see the log above)")
                for p0, p1 in zip(parties[0], parties[1], strict=True):
                    slower = {"product": p0["product"], "wall_s": max(p0["wall_s"], p1["wall_s"]),
                              "compute_s": max(p0["compute_s"], p1["compute_s"]),
                              "bytes": p0["bytes"], "rounds": p0["rounds"]}
                    samples[mode].setdefault(p0["product"], []).append(slower)
                print(f"  matmuls round {r + 1}/{rounds} {mode}: "
                      f"{sum(max(a['wall_s'], b['wall_s']) for a, b in zip(*parties, strict=True)):.2f} s",
                      file=sys.stderr)
    finally:
        crypten_compat.install_fast_matmul(False)
    rows = []
    for name, _, _ in BLOCK_MATMULS:
        row = {"product": name}
        for mode in MODES:
            runs = samples[mode][name]
            row[mode] = {k: statistics.median(s[k] for s in runs) for k in ("wall_s", "compute_s")}
            row[mode]["bytes"] = sorted({s["bytes"] for s in runs})
            row[mode]["rounds"] = sorted({s["rounds"] for s in runs})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- part 2: forward


def make_checkpoint(kind: str, folder: Path) -> Path:
    """A randomly initialised checkpoint of one of MODELS (weights do not change the cost)."""
    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.config import make_config
    from pi_lnfree.model import GPT

    spec = {k: v for k, v in MODELS[kind].items() if k != "label"}
    cfg = make_config(spec.pop("preset"), spec.pop("variant"), spec.pop("vocab_size"), **spec)
    torch.manual_seed(0)
    path = folder / f"{kind}.pt"
    save_checkpoint(path, GPT(cfg).state_dict(), cfg)
    return path


def _forward_once(ckpt: Path, mode: str, seq_len: int) -> dict:
    from pi_lnfree.secure import crypten_compat
    from pi_lnfree.secure.evaluate import secure_eval

    os.environ[crypten_compat.FAST_MATMUL_ENV] = mode
    try:
        res = secure_eval(ckpt, PROTOCOL, seq_len=seq_len, samples=1, timeout_s=900)
    finally:
        os.environ.pop(crypten_compat.FAST_MATMUL_ENV, None)
    ops = res["ops"]
    return {
        "wall_s": res["wall_seconds"],
        "forward_s": res["total"]["seconds"],
        "matmul_s": sum(ops[c]["seconds"] for c in MATMUL_CATEGORIES),
        "ops_s": {c: ops[c]["seconds"] for c in ops},
        "bytes": res["total"]["bytes"],
        "rounds": res["total"]["rounds"],
        "dealer_bytes": res["total"]["dealer_bytes"],
        "max_abs_logit_error": (res["fidelity"] or {}).get("max_abs_logit_error"),
    }


def bench_forward(kinds: list[str], rounds: int, seq_len: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-secure-") as tmp:
        for kind in kinds:
            ckpt = make_checkpoint(kind, Path(tmp))
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            for r in range(rounds):
                for mode in MODES:
                    runs[mode].append(_forward_once(ckpt, mode, seq_len))
                    print(f"  forward {kind} round {r + 1}/{rounds} {mode}: "
                          f"{runs[mode][-1]['forward_s']:.2f} s forward, {runs[mode][-1]['wall_s']:.2f} s wall",
                          file=sys.stderr)
            row = {"model": MODELS[kind]["label"], "seq_len": seq_len}
            for mode in MODES:
                rs = runs[mode]
                row[mode] = {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "forward_s", "matmul_s")}
                row[mode]["ops_s"] = {c: statistics.median(x["ops_s"][c] for x in rs) for c in rs[0]["ops_s"]}
                for k in ("bytes", "rounds", "dealer_bytes"):
                    row[mode][k] = sorted({x[k] for x in rs})
                row[mode]["max_abs_logit_error"] = [x["max_abs_logit_error"] for x in rs]
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- part 3: profile

# aten op -> category of local work (self CPU time); everything not listed is "other ops".
OP_CATEGORIES = {
    "int64 matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::dot", "aten::mv"),
    "random ring elements": ("aten::randint", "aten::random_"),
    "elementwise arithmetic": ("aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_",
                               "aten::div", "aten::div_", "aten::neg", "aten::sum", "aten::rsub", "aten::square"),
    "bitwise / comparison circuits": ("aten::bitwise_and", "aten::bitwise_xor", "aten::bitwise_or",
                                      "aten::bitwise_not", "aten::__rshift__", "aten::__lshift__",
                                      "aten::__irshift__", "aten::__ilshift__", "aten::bitwise_left_shift",
                                      "aten::bitwise_right_shift", "aten::eq", "aten::ge", "aten::gt",
                                      "aten::lt", "aten::le", "aten::ne", "aten::__and__", "aten::__xor__",
                                      "aten::__iand__", "aten::__ixor__"),
    "copies, views, stacking": ("aten::copy_", "aten::clone", "aten::cat", "aten::stack", "aten::contiguous",
                                "aten::index_select", "aten::index", "aten::gather", "aten::empty", "aten::zeros",
                                "aten::empty_like", "aten::zeros_like", "aten::resize_", "aten::set_", "aten::fill_"),
    "encode / dtype casts": ("aten::to", "aten::_to_copy", "aten::round", "aten::trunc"),
    "communication (gloo)": ("c10d::", "gloo:"),
}


def _op_category(name: str) -> str:
    for category, names in OP_CATEGORIES.items():
        if name in names or any(n.endswith(":") and name.startswith(n) for n in names):
            return category
    return "other ops"


def profiled_party(job):
    """`PartyJob.program` for profiling: `evaluate.party_program` under torch.profiler.

    Writes this party's self-CPU seconds per aten op, the program's wall seconds and its
    communication seconds to `<job.payload>/rank<r>.json`."""
    from torch.profiler import ProfilerActivity, profile

    from pi_lnfree.secure import crypten_compat
    from pi_lnfree.secure.evaluate import party_program

    crypten = crypten_compat.get_crypten()
    comm = crypten.communicator.get()
    comm.reset_communication_stats()
    dealer_wait = [0.0]
    if crypten.mpc.ttp_required() and job.rank == 0:  # party 0 asks the dealer for every triple
        client_cls = type(crypten.mpc.provider.ttp_provider.TTPClient.get())
        request = client_cls.ttp_request

        def timed_request(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return request(self, *args, **kwargs)
            finally:
                dealer_wait[0] += time.perf_counter() - t

        client_cls.ttp_request = timed_request
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        value = party_program(job)
    wall = time.perf_counter() - t0
    ops = {e.key: {"self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in prof.key_averages()}
    Path(job.payload, f"rank{job.rank}.json").write_text(json.dumps(
        {"wall_s": wall, "comm_s": float(comm.get_communication_stats()["time"]), "dealer_s": dealer_wait[0],
         "ops": ops}))
    return value


def profile_forward(kind: str, seq_len: int, mode: str) -> dict:
    """One secure forward of MODELS[kind] with each party under torch.profiler; per-category
    self-CPU seconds of the client and the server (the TTP dealer is not profiled)."""
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.secure import crypten_compat
    from pi_lnfree.secure.parties import PartyJob, free_port, launch_local
    from pi_lnfree.secure.profile import load_networks, load_profile
    from pi_lnfree.secure.result import assemble_result
    from pi_lnfree.secure.roles import DEALER
    from pi_lnfree.secure.tokens import make_tokens

    profile = load_profile(PROTOCOL)
    with tempfile.TemporaryDirectory(prefix="bench-secure-profile-") as tmp:
        ckpt = make_checkpoint(kind, Path(tmp))
        model, _ = load_model(ckpt, "cpu")
        tokens, source = make_tokens({"samples": 1, "seq_len": seq_len, "seed": 0}, model.config)
        common = dict(profile=profile, timeout_s=900, master_port=free_port(), threads=1,
                      program="bench_secure:profiled_party", payload=tmp)
        jobs = [PartyJob(rank=0, tokens=tokens, token_spec={"source": source}, **common),
                PartyJob(rank=1, checkpoint=str(ckpt), **common)]
        if profile.provider == "TTP":
            jobs.append(PartyJob(rank=DEALER, **common))
        os.environ[crypten_compat.FAST_MATMUL_ENV] = mode
        old_path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), old_path]))
        try:
            t0 = time.perf_counter()
            results = launch_local(jobs, 900)
            wall = time.perf_counter() - t0
        finally:
            os.environ.pop(crypten_compat.FAST_MATMUL_ENV, None)
            if old_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_path
        metered = assemble_result(str(ckpt), model.config, profile, results[0], model, load_networks(),
                                  "local processes", wall)
        parties = {}
        for rank, role in ((0, "client"), (1, "server")):
            data = json.loads(Path(tmp, f"rank{rank}.json").read_text())
            cats: dict[str, float] = {}
            top = sorted(data["ops"].items(), key=lambda kv: -kv[1]["self_s"])[:12]
            for name, rec in data["ops"].items():
                cats[_op_category(name)] = cats.get(_op_category(name), 0.0) + rec["self_s"]
            parties[role] = {"wall_s": data["wall_s"], "comm_s": data["comm_s"], "dealer_s": data["dealer_s"],
                             "categories": cats,
                             "top_ops": [(n, r["self_s"], r["calls"]) for n, r in top]}
    return {"model": MODELS[kind]["label"], "seq_len": seq_len, "mode": mode, "parties": parties,
            "metered_ops_s": {c: metered["ops"][c]["seconds"] for c in metered["ops"]},
            "metered_forward_s": metered["total"]["seconds"]}


def profile_markdown(prof: dict, command: str) -> str:
    lines = [f"## {prof['model']}, T={prof['seq_len']}, matmul path: {prof['mode']}", "",
             f"Command: `{command}`", "",
             "Metered forward seconds per operator category (slower party): " + ", ".join(
                 f"{c} {s:.2f}" for c, s in prof["metered_ops_s"].items()) + f"; total {prof['metered_forward_s']:.2f} s.",
             "", "Local work by kind (torch.profiler self-CPU seconds of each party's whole program: "
             "weight sharing, forward, exchange; profiler overhead lands in the last row):", "",
             "| kind | client s | client % | server s | server % |", "|---|---|---|---|---|"]
    cl, sv = prof["parties"]["client"], prof["parties"]["server"]
    comm_kind = "communication (gloo)"

    def row(name: str, c: float, s: float) -> str:
        return f"| {name} | {c:.2f} | {100 * c / cl['wall_s']:.0f}% | {s:.2f} | {100 * s / sv['wall_s']:.0f}% |"

    for n in [k for k in OP_CATEGORIES if k != comm_kind] + ["other ops"]:
        lines.append(row(n, cl["categories"].get(n, 0.0), sv["categories"].get(n, 0.0)))
    lines.append(row("inside communication calls (send, receive, waiting for the peer)", cl["comm_s"], sv["comm_s"]))
    lines.append(row("waiting for the TTP dealer's triples (party 0 only)", cl["dealer_s"], sv["dealer_s"]))
    for p in (cl, sv):
        local = sum(v for k, v in p["categories"].items() if k != comm_kind)
        p["python_s"] = p["wall_s"] - local - p["comm_s"] - p["dealer_s"]
    lines.append(row("Python: CrypTen bookkeeping, small-op dispatch, profiler (the rest)", cl["python_s"], sv["python_s"]))
    lines.append(row("**program wall**", cl["wall_s"], sv["wall_s"]))
    for role, p in (("client", cl), ("server", sv)):
        lines += ["", f"Top aten ops of the {role} (self-CPU s, calls): " + "; ".join(
            f"{n} {t:.2f} s ({c})" for n, t, c in p["top_ops"])]
    lines.append("")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def to_markdown(result: dict) -> str:
    env = result["environment"]
    cal = env["calibration"]
    lines = [
        "# Secure evaluation: stock CrypTen vs float64-limb int64 matmul",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; torch {env['torch']} (CPU capability {env['cpu_capability']}), "
        f"{env['cpus']} CPUs, load average at start {env['loadavg']}.  ",
        f"Calibration (one 128x768 @ 768x768 int64 product, 1 thread): torch int64 {cal['int64_s'] * 1e3:.1f} ms, "
        f"limbs {cal['limbs_s'] * 1e3:.1f} ms -> speed-up {cal['speedup']:.2f}x; "
        f"`fast_matmul = true` in auto mode {'uses' if env['auto_uses_limbs'] else 'does NOT use'} the limbs here.",
        "",
        "Speed-up = stock seconds / limbs seconds (above 1: limbs faster). Medians over rounds.",
    ]
    if result.get("matmuls"):
        lines += ["", "## Secret-shared matmuls of one GPT-2-small block (T=128, two parties, TFP)", "",
                  "| product | stock wall s | limbs wall s | stock compute s | limbs compute s | compute speed-up | bytes (party 0) | rounds | identical |",
                  "|---|---|---|---|---|---|---|---|---|"]
        tot = {m: [0.0, 0.0] for m in MODES}
        for r in result["matmuls"]:
            s, f = r["stock"], r["limbs"]
            same = s["bytes"] == f["bytes"] and s["rounds"] == f["rounds"]
            for m in MODES:
                tot[m][0] += r[m]["wall_s"]
                tot[m][1] += r[m]["compute_s"]
            lines.append(f"| {r['product']} | {s['wall_s']:.3f} | {f['wall_s']:.3f} | {s['compute_s']:.3f} | "
                         f"{f['compute_s']:.3f} | {_ratio(s['compute_s'], f['compute_s'])} | "
                         f"{','.join(map(str, s['bytes']))} | {','.join(map(str, s['rounds']))} | {'yes' if same else 'NO'} |")
        lines.append(f"| **all six** | {tot['stock'][0]:.3f} | {tot['limbs'][0]:.3f} | {tot['stock'][1]:.3f} | "
                     f"{tot['limbs'][1]:.3f} | {_ratio(tot['stock'][1], tot['limbs'][1])} | | | |")
    if result.get("forward"):
        lines += ["", "## Whole secure forward (`secure-eval`, protocols/crypten-2pc-ttp.toml, 1 sequence)", "",
                  "| model | T | stock wall s | limbs wall s | wall speed-up | stock forward s | limbs forward s | "
                  "forward speed-up | stock matmul-ops s | limbs matmul-ops s | matmul speed-up | MB | rounds | identical |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["forward"]:
            s, f = r["stock"], r["limbs"]
            same = all(s[k] == f[k] for k in ("bytes", "rounds", "dealer_bytes"))
            lines.append(
                f"| {r['model']} | {r['seq_len']} | {s['wall_s']:.2f} | {f['wall_s']:.2f} | {_ratio(s['wall_s'], f['wall_s'])} | "
                f"{s['forward_s']:.2f} | {f['forward_s']:.2f} | {_ratio(s['forward_s'], f['forward_s'])} | "
                f"{s['matmul_s']:.2f} | {f['matmul_s']:.2f} | {_ratio(s['matmul_s'], f['matmul_s'])} | "
                f"{','.join(f'{b / 1e6:.1f}' for b in s['bytes'])} | {','.join(f'{x:.0f}' for x in s['rounds'])} | "
                f"{'yes' if same else 'NO'} |")
        lines += ["", "Per operator category (metered forward seconds, stock / limbs):", "",
                  "| model | " + " | ".join(result["forward"][0]["stock"]["ops_s"]) + " |",
                  "|---|" + "---|" * len(result["forward"][0]["stock"]["ops_s"])]
        for r in result["forward"]:
            cells = [f"{r['stock']['ops_s'][c]:.2f} / {r['limbs']['ops_s'][c]:.2f}" for c in r["stock"]["ops_s"]]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
        lines += ["", "Forward = sum of the metered operator seconds (slower party, communication waits "
                  "included); matmul-ops = embedding + linear + attention + lm_head; wall = the whole "
                  "`secure_eval` call (process start, weight sharing, plaintext reference)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternations stock/limbs")
    ap.add_argument("--matmul-repeats", type=int, default=2, help="repeats of each matmul inside one run (best kept)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--models", default="block,demo", help=f"comma list of {sorted(MODELS)}")
    ap.add_argument("--skip-matmuls", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_secure.md"))
    ap.add_argument("--json-out", help="also write the raw measurements as JSON here")
    ap.add_argument("--profile", action="store_true",
                    help="instead: profile one secure forward per model (stock path) with torch.profiler")
    ap.add_argument("--profile-mode", default="stock", choices=MODES)
    ap.add_argument("--profile-out", default=str(ROOT / "benchmarks" / "results" / "secure_profile.md"))
    args = ap.parse_args()
    kinds = [k for k in args.models.split(",") if k]
    unknown = set(kinds) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; known: {sorted(MODELS)}")

    command = "benchmarks/bench_secure.py " + " ".join(sys.argv[1:])
    if args.profile:
        text = "# Where a secure forward spends its time (torch.profiler, per party)\n\n" + "".join(
            profile_markdown(profile_forward(k, args.seq_len, args.profile_mode), command) for k in kinds)
        Path(args.profile_out).write_text(text)
        print(text)
        return

    from pi_lnfree.secure import fast_matmul

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    calibration = fast_matmul.measure_speedup()
    torch.set_num_threads(saved_threads)
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": {
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "calibration": calibration, "auto_uses_limbs": calibration["speedup"] >= 1.2,
        },
    }
    if not args.skip_matmuls:
        result["matmuls"] = bench_matmuls(args.rounds, args.matmul_repeats)
    if not args.skip_forward:
        result["forward"] = bench_forward(kinds, args.rounds, args.seq_len)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
