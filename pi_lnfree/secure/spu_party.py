"""One party of an SPU secure forward: `python -m pi_lnfree.secure.spu_party JOB.json OUT_DIR`,
run by the SPU environment's interpreter (`make spu`), started by `pi_lnfree.secure.spu_engine`.

The job (JSON, written by the engine) names this party's rank, every party's link address, the
protocol profile, the timeout and this party's private input: the server (rank 1) the checkpoint
path, the client (rank 0) its token ids. A helper (rank 2, ABY3 only) holds no input. Nothing
else reaches a party: the server's job holds no tokens, the client's no checkpoint.

Steps, all parties in lockstep over SPU's link (brpc):

1. the server opens the checkpoint and sends the public model config to every party; the client
   checks its tokens against it and sends the public (samples, seq_len), or an error;
2. the server secret-shares every weight (`SpuOps.weight`), once per session, and one small
   unmetered program absorbs the protocol's one-off setup (`SpuOps.warm_up`);
3. per sequence: the client shares its one-hot rows, every party runs the decoder structure
   (`pi_lnfree.secure.structure.Decoder`) on the SPU backend under a fresh meter, and the client
   alone reconstructs the logits;
4. every party sends its meter readings (plain numbers) to the client, which writes
   `OUT_DIR/result.json` and `OUT_DIR/logits.npy`; the others write `OUT_DIR/result.json` only.

Failures end with `{"kind": "error", "value": one line}` in result.json and exit code 1.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from pi_lnfree.secure.roles import CLIENT, SERVER, SPU_ROLES, party_label


def send_json(link, dst: int, obj: Any) -> None:
    link.send(dst, json.dumps(obj).encode())


def recv_json(link, src: int) -> Any:
    return json.loads(link.recv(src).decode())


def make_link(rank: int, addresses: list[str], timeout_s: float):
    """This party's brpc link to every party (`addresses[r]` = "host:port" of rank r). A peer
    that does not answer within `timeout_s` seconds (connecting or mid-protocol) is an error."""
    import spu.libspu as libspu

    desc = libspu.link.Desc()
    desc.id = "pi-lnfree-spu"
    desc.recv_timeout_ms = int(timeout_s * 1000)
    desc.http_timeout_ms = int(timeout_s * 1000)
    desc.connect_retry_interval_ms = 500
    desc.connect_retry_times = max(1, math.ceil(timeout_s / 0.5))
    for r, addr in enumerate(addresses):
        desc.add_party(f"party{r}", addr)
    return libspu.link.create_brpc(desc, rank)


def setup_logging(path: str) -> None:
    """SPU's log (with the per-run profile lines the meter reads) goes to `path`, not the console."""
    import spu.libspu as libspu

    opts = libspu.logging.LogOptions()
    opts.enable_console_logger = False
    opts.system_log_path = path
    libspu.logging.setup_logging(opts)


def run(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The party's program (module docstring); what goes into result.json."""
    import torch

    from pi_lnfree.config import ModelConfig
    from pi_lnfree.errors import UserError
    from pi_lnfree.secure.backends.spu_ops import LinkLog, SpuOps
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.profile import load_profile
    from pi_lnfree.secure.structure import Decoder, check_supported, load_weights

    torch.set_num_threads(1)
    rank, profile = int(job["rank"]), load_profile(job["profile"])
    world = profile.world_size
    log_path = str(out_dir / "spu.log")
    setup_logging(log_path)
    link = make_link(rank, job["addresses"], float(job["timeout_s"]))
    others = [r for r in range(world) if r != rank]

    state = None
    if rank == SERVER:
        from pi_lnfree.checkpoint import load_model

        model, _ = load_model(job["checkpoint"], "cpu")
        cfg, state = model.config, model.state_dict()
        check_supported(cfg, profile)
        for r in others:
            send_json(link, r, cfg.to_dict())
    else:
        cfg = ModelConfig.from_dict(recv_json(link, SERVER))

    if rank == CLIENT:
        tokens = np.asarray(job["tokens"], dtype=np.int64)
        try:
            if tokens.ndim != 2 or tokens.size == 0:
                raise UserError("the client's tokens must be a non-empty (samples, seq_len) array")
            if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
                raise UserError(f"token ids must be in [0, {cfg.vocab_size}) (the model's vocabulary)")
            check_supported(cfg, profile, int(tokens.shape[1]))
        except UserError as e:
            for r in others:
                send_json(link, r, {"error": str(e)})
            raise
        meta = {"samples": int(tokens.shape[0]), "seq_len": int(tokens.shape[1])}
        for r in others:
            send_json(link, r, meta)
    else:
        tokens = None
        meta = recv_json(link, CLIENT)
        if "error" in meta:
            raise UserError(f"the client stopped: {meta['error']}")

    ops = SpuOps(link, profile, LinkLog(log_path))
    ops.capture = bool(job.get("capture_view"))
    t0 = time.perf_counter()
    weights = load_weights(cfg, state, ops)
    setup_bytes = ops.warm_up()
    setup_s = time.perf_counter() - t0
    del state

    states, logits = [], []
    for i in range(meta["samples"]):
        # local seconds without SPU's one-off compilation of each program
        meter = Meter(ops.counters, clock=lambda: time.perf_counter() - ops.compile_seconds)
        ops.meter = meter
        onehot = ops.tokens(None if tokens is None else tokens[i], meta["seq_len"], cfg.vocab_size)
        with meter.span():
            out = Decoder(cfg, weights, ops).forward(onehot)
        ops.meter = None
        states.append(meter.state())
        if out is not None:
            logits.append(np.asarray(out, dtype=np.float32)[0])

    result: dict[str, Any] = {
        "rank": rank,
        "states": states,
        "input_bytes": ops.input_bytes,
        "setup_bytes": setup_bytes,
        "compile_seconds": ops.compile_seconds,
        "weight_sharing_seconds": setup_s,
    }
    if ops.capture and "tokens" in ops.captured:
        np.save(out_dir / "token_share.npy", ops.captured["tokens"])
    if rank != CLIENT:
        send_json(link, CLIENT, result)
        link.stop_link()
        return {"role": SPU_ROLES[rank], **result}
    peers = {r: recv_json(link, r) for r in others}
    link.stop_link()
    np.save(out_dir / "logits.npy", np.stack(logits))
    return {"role": "client", "config": cfg.to_dict(), "parties": {rank: result, **peers}}


def _describe(exc: BaseException) -> str:
    """One line for the engine: the message of a `UserError`, else the exception's kind and text
    (a lost or silent peer shows up as SPU's link timeout or connection error)."""
    from pi_lnfree.errors import UserError

    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, UserError):
        return text
    lowered = text.lower()
    if any(k in lowered for k in ("timeout", "timed out", "connect", "closed", "peer")):
        return f"lost or never reached a peer ({type(exc).__name__}: {text})"
    return f"{type(exc).__name__}: {text}"


def main(job_file: str, out_dir: str, program=None) -> int:
    """Run the job with `program(job, out_dir)` (default `run`, the secure forward), write
    `OUT_DIR/result.json` ({"kind": "ok"|"error", "value"}); the exit code."""
    out = Path(out_dir)
    job = json.loads(Path(job_file).read_text())
    label = party_label(int(job["rank"]), SPU_ROLES)
    try:
        message, code = {"kind": "ok", "value": (program or run)(job, out)}, 0
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line for the engine
        message, code = {"kind": "error", "value": f"SPU {label} failed: {_describe(e)}"}, 1
        if os.environ.get("PI_LNFREE_DEBUG"):
            traceback.print_exc()
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(message))
    os.replace(tmp, out / "result.json")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
