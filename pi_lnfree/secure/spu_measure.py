"""One SPU party of a measuring run (the cost model's SPU calibration and its checks):
`python -m pi_lnfree.secure.spu_measure JOB.json OUT_DIR`, run by the SPU environment's
interpreter and started by `pi_lnfree.secure.spu_engine.measure_local`.

The job holds this party's rank, the link addresses, the profile, the timeout and `items`, the
same items as CrypTen's `pi_lnfree.secure.calibrate.measure`:

* `{"type": "call", "kind", "dims", "repeat"}`: one primitive of the calibration design
  (`pi_lnfree.secure.calls.call_thunk`), on random inputs of those shapes;
* `{"type": "forward", "config", "T", "seed"}`: a whole secure forward of a config with random
  weights (seeded, the server's) and random tokens (the client's);
* `{"type": "block", "config", "T", "layer", "seed"}`: one block on a random shared input.

Every party first runs `SpuOps.warm_up` (a protocol's one-off session setup, as in secure-eval);
then, per item, the inputs are shared (unmetered: secure-eval reports input sharing apart from
the operators) and the item runs `repeat` times, each under a fresh `Meter` over this party's
link counters, exactly as `pi_lnfree.secure.spu_party` meters a secure forward (local seconds
without SPU's one-off compilation of each program). The other parties send their meter states
to the client, which returns every party's states per item and repeat; the main process combines
them (`meter.combine_senders`). Costs depend on shapes only, so the random values do not matter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pi_lnfree.secure.roles import CLIENT, SERVER


def _builder(ops, rank: int, seed: int):
    """`share(shape, owner, scale, positive)` for `calls.call_thunk`: random float32 values of
    the owner's, secret-shared over the link (unmetered)."""
    import numpy as np

    rng = np.random.default_rng(seed + rank)

    def share(shape, owner, scale=0.5, positive=False):
        value = None
        if rank == owner:
            value = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape) * scale
            value = np.asarray(value, dtype=np.float32)
        return ops.share_input(owner, value, tuple(shape))

    return share


def _model_thunk(ops, item: dict[str, Any], rank: int, share):
    """The thunk of a `forward` or `block` item (weights and inputs shared here, unmetered)."""
    import numpy as np
    import torch

    from pi_lnfree.config import ModelConfig
    from pi_lnfree.model import GPT
    from pi_lnfree.secure.structure import Decoder, load_weights

    cfg = ModelConfig.from_dict(item["config"])
    T, seed = int(item["T"]), int(item.get("seed", 0))
    state = None
    if rank == SERVER:
        torch.manual_seed(seed)
        state = GPT(cfg).state_dict()
    model = Decoder(cfg, load_weights(cfg, state, ops), ops)
    if item["type"] == "forward":
        ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, T) if rank == CLIENT else None
        x = ops.tokens(ids, T, cfg.vocab_size)
        return lambda: model.forward(x)
    x = share((1, T, cfg.n_embd), CLIENT)
    return lambda: model.block(int(item.get("layer", 0)), x)


def run(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The party's program (module docstring); what goes into result.json: the client's holds
    `parties` (rank -> its meter states per item and repeat) and the SPU version."""
    import spu
    import torch

    from pi_lnfree.secure.backends.spu_ops import LinkLog, SpuOps
    from pi_lnfree.secure.calls import call_thunk
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.profile import load_profile
    from pi_lnfree.secure.spu_party import make_link, recv_json, send_json, setup_logging

    torch.set_num_threads(1)
    rank, profile = int(job["rank"]), load_profile(job["profile"])
    log_path = str(out_dir / "spu.log")
    setup_logging(log_path)
    link = make_link(rank, job["addresses"], float(job["timeout_s"]))
    ops = SpuOps(link, profile, LinkLog(log_path))
    ops.warm_up()
    share = _builder(ops, rank, int(job.get("seed", 0)))
    states: list[list[dict[str, Any]]] = []
    for item in job["items"]:
        if item["type"] == "call":
            thunk = call_thunk(ops, item["kind"], item["dims"], share)
        else:
            thunk = _model_thunk(ops, item, rank, share)
        runs = []
        for _ in range(int(item.get("repeat", 1))):
            meter = Meter(ops.counters, clock=lambda: time.perf_counter() - ops.compile_seconds)
            ops.meter = meter
            with meter.span():
                out = thunk()
            ops.meter = None
            del out  # frees the outputs in every party's symbol table
            runs.append(meter.state())
        states.append(runs)
    others = [r for r in range(profile.world_size) if r != rank]
    if rank != CLIENT:
        send_json(link, CLIENT, states)
        link.stop_link()
        return {"rank": rank}
    parties = {rank: states, **{r: recv_json(link, r) for r in others}}
    link.stop_link()
    return {"parties": parties, "spu": spu.__version__}


if __name__ == "__main__":
    from pi_lnfree.secure.spu_party import main

    sys.exit(main(sys.argv[1], sys.argv[2], program=run))
