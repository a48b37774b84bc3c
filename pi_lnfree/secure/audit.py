"""Range audit: will a checkpoint evaluate correctly under a protocol profile? (no MPC)

A secure approximation used outside its valid inputs gives a wrong number without any error
(a GELU input of 22 under the tanh formula turns a logit of 14 into 8.7e7). The audit runs the
decoder structure (`pi_lnfree.secure.structure`) on the exact float64 backend over the client's
tokens, records what each approximation will see at each site (layer and operator), and
compares it with the valid ranges derived for the profile's settings
(`pi_lnfree.secure.approx`):

* softmax: the exponential's input z - row max (its minimum is minus the largest spread between
  a row's max and its smallest visible score), and the reciprocal's input, the row sum of the
  exponentials (in [1, T]);
* LayerNorm: the variance + eps whose inverse square root is taken; Dynamic Tanh: alpha x;
* FFN activation: the pre-activation range of each GELU layer (ReLU and leaky ReLU are exact);
* fixed point: every product is formed on int64 shares at scale 2^(2f) before truncation, so the
  largest matmul output must stay below 2^(62 - 2f) (f = precision_bits).

Each check reports the observed range, the valid range, the headroom and, when it fails, the
profile setting that would fix it (found by deriving the ranges again for larger settings).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pi_lnfree.config import ModelConfig
from pi_lnfree.secure import approx
from pi_lnfree.secure.approx import ValidRange
from pi_lnfree.secure.backends.torch64 import Torch64Ops
from pi_lnfree.secure.profile import ProtocolProfile
from pi_lnfree.secure.structure import Decoder, load_weights


class AuditOps(Torch64Ops):
    """The float64 backend, recording the inputs of every approximation by site.

    `seen[(site, quantity)] = [min, max]` over every call and sequence; quantities: `exp input`,
    `row sum`, `variance`, `activation:<name>`, `matmul output`.
    """

    def __init__(self):
        self.seen: dict[tuple[str, str], list[float]] = {}

    def _see(self, quantity: str, values: torch.Tensor) -> None:
        lo, hi = float(values.min()), float(values.max())
        rec = self.seen.setdefault((self.where, quantity), [lo, hi])
        rec[0], rec[1] = min(rec[0], lo), max(rec[1], hi)

    def linear(self, x, weight_t, bias=None):
        y = super().linear(x, weight_t, bias)
        self._see("matmul output", y.abs())
        return y

    def attention_scores(self, q, k):
        s = super().attention_scores(q, k)
        self._see("matmul output", s.abs())
        return s

    def softmax(self, scores):
        T = scores.size(-1)
        visible = torch.ones(T, T, dtype=torch.bool).tril()
        z = scores.masked_fill(~visible, float("inf"))
        row_max = scores.masked_fill(~visible, float("-inf")).amax(-1, keepdim=True)
        self._see("exp input", (z - row_max).amin(-1))  # the most negative z - max per row
        probs = super().softmax(scores)
        e = torch.exp(scores - row_max).masked_fill(~visible, 0.0)
        self._see("row sum", e.sum(-1))
        return probs

    def layernorm(self, x, gamma, beta, eps: float):
        mu = x.mean(-1, keepdim=True)
        self._see("variance", (x - mu).square().mean(-1) + eps)
        return super().layernorm(x, gamma, beta, eps)

    def dyt(self, x, alpha, gamma, beta):
        self._see("tanh input", alpha * x)
        return super().dyt(x, alpha, gamma, beta)

    def activation(self, x, name: str, slope=None):
        self._see(f"activation:{name}", x)
        return super().activation(x, name, slope)

    def lm_head(self, x, weight_t, bias=None, reveal_to: int | None = None):
        y = super().lm_head(x, weight_t, bias)
        self._see("matmul output", y.abs())
        return y


@dataclass
class Check:
    """One approximation at one site: observed inputs vs its valid range."""

    site: str
    operator: str
    approximation: str
    observed: tuple[float, float]
    valid: tuple[float, float]
    headroom: float
    ok: bool
    fix: str | None
    source: str

    def warning(self) -> str:
        lo, hi = self.observed
        vlo, vhi = self.valid
        text = (f"{self.site}: {self.approximation} sees [{lo:.4g}, {hi:.4g}], outside its valid range "
                f"[{vlo:.4g}, {vhi:.4g}]: the secure result will be wrong")
        return text + (f"; fix: {self.fix}" if self.fix else "; no profile setting covers it")


def _softmax_covers(profile: ProtocolProfile, exp_low: float | None, row_sum: float | None) -> bool:
    n, f = profile.exp_iterations, profile.precision_bits
    ok = exp_low is None or approx.exp_range(n, f).low <= exp_low
    return ok and (row_sum is None or approx.reciprocal_range(profile.reciprocal_nr_iters, n, f).high >= row_sum)


def _exp_fix(profile: ProtocolProfile, exp_low: float | None, row_sum: float | None) -> str | None:
    for key, values in (("exp_iterations", range(profile.exp_iterations + 1, 13)),
                        ("precision_bits", range(profile.precision_bits + 2, 25, 2))):
        for v in values:
            if _softmax_covers(_with(profile, **{key: v}), exp_low, row_sum):
                section = "protocol" if key == "precision_bits" else "approximations"
                return f"set {section}.{key} = {v} in the profile (now {getattr(profile, key)})"
    return None


def _activation_fix(profile: ProtocolProfile, name: str, lo: float, hi: float) -> str | None:
    def covers(n: int) -> bool:
        rng = approx.activation_range(_with(profile, exp_iterations=n), name)
        return rng is None or rng.contains(lo, hi)

    n = approx.needed_exp_iterations(covers)
    options = []
    if name == "gelu" and profile.gelu != "erf":
        options.append('approximations.gelu = "erf" (Taylor erf with a ReLU switch: no input limit; '
                       "profile crypten-2pc-ttp-gelu-erf)")
    if n is not None:
        options.append(f"approximations.exp_iterations = {n} (now {profile.exp_iterations})")
    return " or ".join(options) or None


def _tanh_fix(profile: ProtocolProfile, lo: float, hi: float) -> str | None:
    n = approx.needed_exp_iterations(lambda n: approx.tanh_range(_with(profile, exp_iterations=n)).contains(lo, hi))
    return None if n is None else f"approximations.exp_iterations = {n} (now {profile.exp_iterations})"


def _layernorm_fix(profile: ProtocolProfile, lo: float, hi: float) -> str | None:
    if profile.layernorm_inv_sqrt == "crypten" and approx.layernorm_range(_with(profile, layernorm_inv_sqrt="ranged")).contains(lo, hi):
        return 'approximations.layernorm_inv_sqrt = "ranged" (valid for variances in [2^-16, 2^16])'
    return None


def _with(profile: ProtocolProfile, **changes: Any) -> ProtocolProfile:
    import dataclasses

    return dataclasses.replace(profile, **changes)


def _check(site: str, operator: str, rng: ValidRange, lo: float, hi: float, fix) -> Check:
    ok = rng.contains(lo, hi)
    return Check(site, operator, rng.name, (lo, hi), (rng.low, rng.high), rng.headroom(lo, hi), ok,
                 None if ok else fix(), rng.source)


def checks_of(seen: dict[tuple[str, str], list[float]], profile: ProtocolProfile) -> list[Check]:
    """Compare recorded inputs (`AuditOps.seen`) with the profile's valid ranges."""
    out: list[Check] = []
    exp_rng = approx.exp_range(profile.exp_iterations, profile.precision_bits)
    rec_rng = approx.reciprocal_range(profile.reciprocal_nr_iters, profile.exp_iterations, profile.precision_bits)
    ln_rng = approx.layernorm_range(profile)
    limit = 2.0 ** (62 - 2 * profile.precision_bits)
    fp_rng = ValidRange("fixed-point product", 0.0, limit, "exact below the limit",
                        f"int64 shares at scale 2^{2 * profile.precision_bits} before truncation", "high")
    for (site, quantity), (lo, hi) in seen.items():
        if quantity == "exp input":
            out.append(_check(site, "softmax", exp_rng, lo, 0.0, lambda lo=lo: _exp_fix(profile, lo, None)))
        elif quantity == "row sum":
            out.append(_check(site, "softmax", rec_rng, lo, hi, lambda hi=hi: _exp_fix(profile, None, hi)))
        elif quantity == "variance":
            out.append(_check(site, "layernorm", ln_rng, lo, hi, lambda lo=lo, hi=hi: _layernorm_fix(profile, lo, hi)))
        elif quantity == "tanh input":
            out.append(_check(site, "layernorm", approx.tanh_range(profile), lo, hi,
                              lambda lo=lo, hi=hi: _tanh_fix(profile, lo, hi)))
        elif quantity == "matmul output":
            out.append(_check(site, "linear", fp_rng, 0.0, hi, lambda: None))
        elif quantity.startswith("activation:"):
            name = quantity.split(":", 1)[1]
            rng = approx.activation_range(profile, name)
            if rng is not None:
                out.append(_check(site, "activation", rng, lo, hi,
                                  lambda name=name, lo=lo, hi=hi: _activation_fix(profile, name, lo, hi)))
    return out


def audit(cfg: ModelConfig, state: dict[str, torch.Tensor], profile: ProtocolProfile,
          tokens: torch.Tensor, tokens_source: str = "") -> dict[str, Any]:
    """Audit `state` (a `GPT` state dict of `cfg`) under `profile` on (N, T) `tokens`.

    Returns `{"ok", "profile", "seq_len", "samples", "tokens", "checks": [...], "warnings":
    [...]}`; each check has site, operator, approximation, observed and valid [low, high],
    headroom (fraction of the limit still free; negative when outside), ok, fix and source.
    """
    profile.require_crypten("the range audit")
    ops = AuditOps()
    weights = load_weights(cfg, state, ops)
    decoder = Decoder(cfg, weights, ops)
    with torch.no_grad():
        for row in tokens:
            decoder.forward(ops.tokens(row, row.numel(), cfg.vocab_size))
    checks = checks_of(ops.seen, profile)
    return {
        "ok": all(c.ok for c in checks),
        "profile": profile.name,
        "seq_len": int(tokens.size(1)),
        "samples": int(tokens.size(0)),
        "tokens": tokens_source,
        "checks": [_json_check(c) for c in checks],
        "warnings": [c.warning() for c in checks if not c.ok],
    }


def _json_check(c: Check) -> dict[str, Any]:
    d = asdict(c)
    for key in ("observed", "valid"):
        d[key] = [v if math.isfinite(v) else None for v in d[key]]  # None: no limit on that side
    d["headroom"] = c.headroom if math.isfinite(c.headroom) else None
    return d


__all__ = ["AuditOps", "Check", "audit", "checks_of"]
