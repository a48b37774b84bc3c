"""Test helper run by the SPU environment's interpreter, one process per party:
`python tests/spu_primitives.py RANK ADDR0,ADDR1 PROFILE OUT_DIR`.

Both parties run every operator of `SpuOps` once on seeded inputs that party 0 shares, each under
its own meter, and open every output to party 0. Party 0 writes `OUT_DIR/primitives.npz` (inputs
and opened outputs, by case) and both write `OUT_DIR/costs{RANK}.json` (bytes sent and send
actions per case). Party 0 then runs the ReLU case once more in SPU's own in-memory simulator
and records that run's link total (`simulator_relu_bytes`), the independent reference of
`tests/test_spu.py`. The float64 reference is computed by the test, in the main environment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {"T": 16, "d": 32, "n": 48, "H": 4, "hd": 8, "V": 64, "block": 20}


def inputs() -> dict[str, np.ndarray]:
    """The seeded test inputs (float32), the same in every party process."""
    g = np.random.default_rng(0)
    T, d, n, H, hd, V = (SHAPES[k] for k in ("T", "d", "n", "H", "hd", "V"))
    f = np.float32
    return {
        "x": g.normal(0, 1, (1, T, d)).astype(f),
        "w": (g.normal(0, 1, (d, n)) / np.sqrt(d)).astype(f),
        "b": g.normal(0, 0.1, (n,)).astype(f),
        "onehot": np.eye(V, dtype=f)[g.integers(0, V, T)][None],
        "table": g.normal(0, 0.5, (V, d)).astype(f),
        "positions": g.normal(0, 0.1, (SHAPES["block"], d)).astype(f),
        "q": g.normal(0, 1, (1, H, T, hd)).astype(f),
        "k": g.normal(0, 1, (1, H, T, hd)).astype(f),
        "v": g.normal(0, 1, (1, H, T, hd)).astype(f),
        "scores": g.normal(0, 3, (1, H, T, T)).astype(f),
        "probs": g.dirichlet(np.ones(T), (1, H, T)).astype(f),
        "ln_x": g.normal(0.5, 2, (1, T, d)).astype(f),
        "gamma": g.normal(1, 0.1, (d,)).astype(f),
        "beta": g.normal(0, 0.1, (d,)).astype(f),
        "act_x": g.normal(0, 2, (1, T, n)).astype(f),
        "slope": np.array([0.2], dtype=f),
        "alpha": np.array([0.7], dtype=f),
        "qkv": g.normal(0, 1, (1, T, 3 * d)).astype(f),
        "cos": np.cos(np.arange(SHAPES["block"])[:, None] * np.array([[1.0, 0.1, 0.01, 0.001]])).astype(f),
        "sin": np.sin(np.arange(SHAPES["block"])[:, None] * np.array([[1.0, 0.1, 0.01, 0.001]])).astype(f),
    }


def cases(ops, t):
    """(name, category, thunk returning a tensor or a tuple of tensors) for every operator."""
    return [
        ("matmul", "linear", lambda: ops.linear(t["x"], t["w"])),
        ("linear", "linear", lambda: ops.linear(t["x"], t["w"], t["b"])),
        ("embedding", "embedding", lambda: ops.embedding(t["onehot"], t["table"], t["positions"])),
        ("attention_scores", "attention", lambda: ops.attention_scores(t["q"], t["k"])),
        ("attention_mix", "attention", lambda: ops.attention_mix(t["probs"], t["v"])),
        ("softmax", "softmax", lambda: ops.softmax(t["scores"])),
        ("layernorm", "layernorm", lambda: ops.layernorm(t["ln_x"], t["gamma"], t["beta"], 1e-5)),
        ("dyt", "layernorm", lambda: ops.dyt(t["ln_x"], t["alpha"], t["gamma"], t["beta"])),
        ("relu", "activation", lambda: ops.activation(t["act_x"], "relu", None)),
        ("gelu", "activation", lambda: ops.activation(t["act_x"], "gelu", None)),
        ("gelu_tanh", "activation", lambda: ops.activation(t["act_x"], "gelu_tanh", None)),
        ("leaky_relu", "activation", lambda: ops.activation(t["act_x"], "leaky_relu", 0.1)),
        ("learnable_leaky", "activation", lambda: ops.activation(t["act_x"], "learnable_leaky", t["slope"][0])),
        ("split_heads", "other", lambda: ops.split_heads(t["qkv"], SHAPES["H"])),
        ("merge_heads", "other", lambda: ops.merge_heads(t["q"])),
        ("add", "other", lambda: ops.add(t["x"], t["ln_x"], t["x"])),
        ("rotary", "other", lambda: ops.rotary(t["q"], t["k"], t["cos"], t["sin"])),
    ]


def main(rank: int, addresses: list[str], profile_path: str, out: Path) -> None:
    from pi_lnfree.secure.backends.spu_ops import LinkLog, SpuOps
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.profile import load_profile
    from pi_lnfree.secure.spu_party import make_link, setup_logging

    profile = load_profile(profile_path)
    log = str(out / f"spu{rank}.log")
    setup_logging(log)
    link = make_link(rank, addresses, 120.0)
    ops = SpuOps(link, profile, LinkLog(log))
    plain = inputs()
    shared = {name: ops.share_input(0, value if rank == 0 else None, value.shape) for name, value in plain.items()
              if name not in ("cos", "sin")}
    shared["cos"], shared["sin"] = plain["cos"], plain["sin"]  # public tables
    opened: dict[str, np.ndarray] = {}
    costs: dict[str, dict] = {}
    for name, category, thunk in cases(ops, shared):
        meter = Meter(ops.counters)
        ops.meter = meter
        result = thunk()
        ops.meter = None
        costs[name] = {"category": category, **meter.state()["ops"][category]}
        outs = result if isinstance(result, tuple) else (result,)
        for i, o in enumerate(outs):
            value = ops.reveal(o, 0)
            if rank == 0:
                opened[f"{name}.{i}"] = np.asarray(value)
    if rank == 0:
        np.savez(out / "primitives.npz", **{f"in.{k}": v for k, v in plain.items()}, **opened)
        costs["simulator_relu_bytes"] = simulator_relu_bytes(profile, plain["act_x"], LinkLog(log))
    (out / f"costs{rank}.json").write_text(json.dumps(costs))
    link.stop_link()


def simulator_relu_bytes(profile, x: np.ndarray, log) -> int:
    """Bytes party 0 sends for max(x, 0) in SPU's in-memory simulator (its own link total)."""
    import jax.numpy as jnp
    from spu.utils import simulation

    from pi_lnfree.secure.backends.spu_ops import runtime_config

    sim = simulation.Simulator(2, runtime_config(profile))
    simulation.sim_jax(sim, lambda a: jnp.maximum(a, 0.0))(x)
    time.sleep(0.1)
    return log.next_run()[0]


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], Path(sys.argv[4]))
