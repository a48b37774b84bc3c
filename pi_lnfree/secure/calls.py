"""One primitive call of the cost model's calibration design, on any backend of the structure.

`call_thunk(ops, kind, dims, share)` shares random inputs of the shapes that `dims` describe
(outside any meter) and returns the thunk that runs the one metered primitive `kind` of
`pi_lnfree.secure.cost_features.features` on `ops`: `CryptenOps` in the CrypTen parties
(`pi_lnfree.secure.calibrate`), `SpuOps` in the SPU parties (`pi_lnfree.secure.spu_measure`).
The backend comes with its own `share(shape, owner, scale=0.5, positive=False)`: a secret of
`shape` held by party `owner` (random values: the costs of both engines depend on shapes only).

Dims per kind (the recorder's, `pi_lnfree.secure.backends.recorder`): embedding T, V, d, pos;
linear T, i, o, bias; lm_head T, d, V; attention_* H, T, hd; softmax H, T; layernorm and dyt
T, d; activation:<name> T, n; other n (a residual add of two (n,) vectors), or H, T, hd, rd
(rotary positions on q and k of shape (1, H, T, hd), rd of hd rotated by the public tables).

Imports nothing heavy at module level: the SPU environment imports it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pi_lnfree.secure.roles import CLIENT, SERVER

Share = Callable[..., Any]


def call_thunk(ops, kind: str, dims: dict[str, int], share: Share) -> Callable[[], Any]:
    """Share the inputs of one `kind` call of shape `dims` with `share`, then return the thunk that
    runs it on `ops` (see the module docstring). Raises `ValueError` for an unknown kind."""
    g = dims.get
    if kind == "embedding":
        table = share((g("V"), g("d")), SERVER)
        pos = share((g("T"), g("d")), SERVER) if g("pos") else None
        x = share((1, g("T"), g("V")), CLIENT)
        return lambda: ops.embedding(x, table, pos)
    if kind in ("linear", "lm_head"):
        n_in, n_out = (g("i"), g("o")) if kind == "linear" else (g("d"), g("V"))
        w = share((n_in, n_out), SERVER)  # the structure's pre-transposed (in, out) weights
        x = share((1, g("T"), n_in), CLIENT)
        if kind == "lm_head":
            return lambda: ops.lm_head(x, w, reveal_to=CLIENT)
        b = share((n_out,), SERVER) if g("bias") else None
        return lambda: ops.linear(x, w, b)
    if kind in ("attention_scores", "attention_mix"):
        H, T, hd = g("H"), g("T"), g("hd")
        v = share((1, H, T, hd), CLIENT)
        if kind == "attention_scores":
            k = share((1, H, T, hd), CLIENT)
            return lambda: ops.attention_scores(v, k)
        p = share((1, H, T, T), CLIENT, positive=True)
        return lambda: ops.attention_mix(p, v)
    if kind == "softmax":
        s = share((1, g("H"), g("T"), g("T")), CLIENT, scale=2.0)
        return lambda: ops.softmax(s)
    if kind == "layernorm":
        x = share((1, g("T"), g("d")), CLIENT)
        gamma, beta = share((g("d"),), SERVER), share((g("d"),), SERVER)
        return lambda: ops.layernorm(x, gamma, beta, 1e-5)
    if kind == "dyt":
        x = share((1, g("T"), g("d")), CLIENT)
        alpha, gamma, beta = (share(shape, SERVER) for shape in ((1,), (g("d"),), (g("d"),)))
        return lambda: ops.dyt(x, alpha, gamma, beta)
    if kind.startswith("activation:"):
        name = kind.split(":", 1)[1]
        x = share((1, g("T"), g("n")), CLIENT, scale=2.0)
        slope = share((1,), SERVER, scale=0.05)[0] if name == "learnable_leaky" else 0.01
        return lambda: ops.activation(x, name, slope)
    if kind == "other" and g("rd"):
        H, T, hd = g("H"), g("T"), g("hd")
        q, k = share((1, H, T, hd), CLIENT), share((1, H, T, hd), CLIENT)
        from pi_lnfree.model import rotary_cos_sin  # torch: imported only when needed

        cos, sin = rotary_cos_sin(g("rd"), T, 10000.0)  # public tables; costs do not depend on them
        return lambda: ops.rotary(q, k, cos, sin)
    if kind == "other":
        a, b = share((g("n"),), CLIENT), share((g("n"),), CLIENT)
        return lambda: ops.add(a, b)
    raise ValueError(f"unknown primitive kind {kind!r}")


def rotary_dims(H: int, T: int, hd: int, rd: int) -> dict[str, int]:
    """The dims of one rotary call (q and k of (1, H, T, hd), rd dims rotated), as recorded."""
    return {"n": 2 * H * T * hd, "H": H, "T": T, "hd": hd, "rd": rd}


__all__ = ["call_thunk", "rotary_dims"]
