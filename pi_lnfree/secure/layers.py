"""Secure building blocks on CrypTensors, and the metered primitives the secure forward calls.

The functions in the first half are pure maths on encrypted tensors (no metering); each mirrors
a piece of `pi_lnfree.model`:

* `layernorm`: mean, centred square, mean (variance), `inv_sqrt(var + eps)`, affine. By default
  `inv_sqrt_ranged`: one batched comparison against 32 powers of two gives an initial guess
  within a factor 2^(1/4) for any variance in [2^-16, 2^16], then Newton steps. CrypTen's own
  `inv_sqrt` (exp initial guess + Newton, profile `layernorm_inv_sqrt = "crypten"`) is accurate
  only for a variance in about [0.1, 100] with 3 iterations, which misses the small variances
  of embeddings (~0.01); `wide=True` spends one comparison to rescale variances above 64.
* `dyt`: Dynamic Tanh, gamma * tanh(alpha * x) + beta, in place of a LayerNorm (one elementwise
  tanh; valid for |alpha * x| < 256).
* `activation`: ReLU as `x * (x >= 0)`; fixed leaky ReLU `relu(x) + s (x - relu(x))` with the
  public slope s (no extra communication); learnable leaky ReLU the same with the server's secret
  slope (one extra multiplication); GELU in the erf form through one of three profile methods
  (`tanh` formula, Taylor `erf` (our own series: CrypTen 0.4.1's erf is wrong) with a relu
  switch for large |x|, `sigmoid` x*sigmoid(1.702x)),
  GELU in the tanh form always through the tanh formula.
* `causal_softmax`: all heads of a layer in one call; the causal mask is public: future scores are
  replaced by their row's diagonal score before the row max and their exponentials multiplied by
  the public 0/1 mask, so they have exactly no influence.

`pi_lnfree.secure.backends.crypten_ops.CryptenOps` calls these under the meter, one method per
operator category.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pi_lnfree.secure import crypten_compat

WIDE_THRESHOLD = 64.0  # layernorm_wide_range: variances above this are scaled by 1/256


# ---------------------------------------------------------------------------------------------
# pure secure maths


def layernorm(x, gamma, beta, eps: float, wide: bool = False, method: str = "ranged", iterations: int = 3):
    """LayerNorm over the last dim; `gamma`/`beta` may be CrypTensors or None (no affine).

    `method="ranged"` (default): `inv_sqrt_ranged` (accurate for variances in [2^-16, 2^16]);
    `"crypten"`: CrypTen's `inv_sqrt` ([0.1, 100] with 3 iterations; `wide` adds one comparison
    to extend it upwards by 256x).
    """
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    var = xc.square().mean(-1, keepdim=True) + eps
    if method == "ranged":
        inv = inv_sqrt_ranged(var, iterations)
    elif method == "crypten":
        inv = inv_sqrt_wide(var) if wide else var.inv_sqrt()
    else:
        raise ValueError(f"unknown inv_sqrt method {method!r}")
    y = xc * inv
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


DYT_MAX_INPUT = 256.0  # |alpha * x| below this: CrypTen's tanh (reciprocal method) is accurate


def dyt(x, alpha, gamma, beta):
    """Dynamic Tanh (Zhu et al. 2025; `pi_lnfree.model.DyT`): gamma * tanh(alpha * x) + beta over
    the last dim. `alpha` is a CrypTensor of shape (1,) (the server's learned scalar: one secret
    multiplication) or a public float; `gamma`/`beta` are (d,) CrypTensors or None.

    No mean, variance or inverse square root: one elementwise tanh, CrypTen's `tanh` =
    2 sigmoid(2u) - 1 with sigmoid through exp(-|2u|) (limit approximation (1 - |2u|/2^n)^(2^n),
    n = exp_iterations = 8) and a Newton reciprocal. Valid input range: |alpha * x| < 256
    (`DYT_MAX_INPUT`; beyond it the exp approximation's base drops below -1 and the output is
    garbage); within it the absolute error of tanh is about 4e-3 at 0, falling to ~3e-5 for
    |alpha * x| >= 5. With sigmoid_tanh_method = "chebyshev" the range is narrower.
    """
    y = (x * alpha).tanh()
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


RANGED_EXPONENTS = tuple(range(-15, 17))  # thresholds 2^e of inv_sqrt_ranged


def inv_sqrt_ranged(v, iterations: int = 3):
    """1/sqrt(v) for v in [2^-16, 2^16] (positive): a range-finding initial guess, then Newton.

    One batched comparison of v against the 32 public thresholds 2^e locates v within a factor 2;
    the guess 2^(-(e+1/2)/2) of that interval is a public linear combination of the comparison
    bits, within a factor 2^(1/4) of the answer, so 3 Newton steps y <- y (3 - v y^2) / 2 reach a
    relative error ~ 4e-5 (plus fixed-point resolution 2^-16 / y).
    """
    crypten = crypten_compat.get_crypten()
    K = len(RANGED_EXPONENTS)
    view = (K,) + (1,) * v.dim()
    thresholds = torch.tensor([2.0 ** e for e in RANGED_EXPONENTS], device=v.device).view(view)
    bits = crypten.stack([v] * K) >= thresholds  # bits[k] = v >= 2^e_k, one comparison round
    bits = crypten_compat.as_fixed_point(bits, v)
    guesses = [2.0 ** (-(e + 0.5) / 2) for e in (RANGED_EXPONENTS[0] - 1, *RANGED_EXPONENTS)]
    steps = torch.tensor([guesses[k + 1] - guesses[k] for k in range(K)], device=v.device).view(view)
    y = (bits * steps).sum(0) + guesses[0]
    for _ in range(iterations):
        y = y * (3.0 - (v * y) * y) * 0.5  # (v y) y keeps precision for large v, unlike v y^2
    return y


def inv_sqrt_wide(v):
    """CrypTen's 1/sqrt(v) with one comparison extending its domain upwards by a factor 256."""
    big = v > WIDE_THRESHOLD  # secret 0/1 (integer encoding: multiply secrets by it, not floats)
    scaled = v + (v * big).mul(1.0 / 256 - 1.0)
    y = scaled.inv_sqrt()
    return y + (y * big).mul(1.0 / 16 - 1.0)


def relu(x):
    """max(x, 0) = x * (x >= 0): one comparison, one multiplication by a secret bit."""
    return x.relu()


def leaky_relu(x, slope):
    """x for x >= 0, slope * x otherwise, written relu(x) + slope * (x - relu(x)).

    `slope` is a public float (fixed leaky ReLU, local scaling) or a CrypTensor of shape (1,)
    holding the server's learned slope (one secret multiplication).
    """
    r = x.relu()
    return r + (x - r) * slope


def gelu_tanh_formula(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    inner = (x + x.square().mul(x).mul(0.044715)).mul(math.sqrt(2.0 / math.pi))
    return x.mul(inner.tanh().add(1.0)).mul(0.5)


def erf_taylor(u, iterations: int):
    """erf(u) = 2/sqrt(pi) sum_n (-1)^n u^(2n+1) / (n! (2n+1)), n = 0..iterations.

    Replaces CrypTen 0.4.1's `erf`, whose integer `pow` is wrong for odd exponents >= 5
    ((x^3)^((p-1)/2) instead of x^p). The terms t_n = (-1)^n u^(2n+1) / n! are built by one secret
    multiplication each (t_n = t_{n-1} * u^2 * (-1/n)), so no coefficient is too small for
    16-bit fixed point. Accurate for |u| up to about 1.8 with 8 iterations.
    """
    u2 = u.square()
    term, total = u, u
    for n in range(1, iterations + 1):
        term = (term * u2).mul(-1.0 / n)
        total = total + term.mul(1.0 / (2 * n + 1))
    return total.mul(2.0 / math.sqrt(math.pi))


def gelu_erf(x, clip: float, iterations: int = 8):
    """0.5 x (1 + erf(x / sqrt 2)) for |x| < clip (Taylor erf), relu(x) beyond: the series
    diverges for large |x|, so two comparisons switch to relu there."""
    inside = x.square() < clip * clip
    r = x.relu()
    smooth = x.mul(erf_taylor(x.mul(1.0 / math.sqrt(2.0)), iterations).add(1.0)).mul(0.5)
    return r + (smooth - r) * inside


def gelu_sigmoid(x):
    """x * sigmoid(1.702 x)."""
    return x * x.mul(1.702).sigmoid()


def activation(x, name: str, slope: Any, gelu_method: str, gelu_erf_clip: float, erf_iterations: int = 8):
    """One FFN activation by name (see `pi_lnfree.model.activate`)."""
    if name == "relu":
        return relu(x)
    if name in ("leaky_relu", "learnable_leaky"):
        return leaky_relu(x, slope)
    if name == "gelu_tanh":
        return gelu_tanh_formula(x)
    if name == "gelu":
        if gelu_method == "tanh":
            return gelu_tanh_formula(x)
        if gelu_method == "erf":
            return gelu_erf(x, gelu_erf_clip, erf_iterations)
        if gelu_method == "sigmoid":
            return gelu_sigmoid(x)
        raise ValueError(f"unknown GELU method {gelu_method!r}")
    raise ValueError(f"activation {name!r} is not supported under MPC")


def causal_mask(T: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Public (T, T) lower-triangular 0/1 mask, as int64: a CrypTensor times an integer tensor
    is an exact local product of the shares (a float mask would be encoded and truncated)."""
    return torch.ones(T, T, dtype=torch.long, device=device).tril()


def causal_softmax(scores, max_method: str):
    """Softmax over the last dim of (B, H, T, T) scores with the public causal mask, all heads
    at once.

    Masked (future) entries have exactly no influence: before the row max each is replaced by a
    copy of its row's diagonal score s_ii (always visible), `z = s * mask + s_ii * (1 - mask)`,
    so the max is the max over visible scores for any values the encoding can hold; after the
    exponential the public 0/1 mask zeroes them exactly, so they add nothing to the row sum.
    Every step of the masking is a product of shares with a public integer tensor: local, no
    communication. Then exp of `z - max` (<= 0), and the reciprocal of the row sum (in [1, T]).
    """
    T = scores.size(-1)
    mask = causal_mask(T, scores.device)
    eye = torch.eye(T, dtype=torch.long, device=scores.device)
    diag = (scores * eye).sum(-1, keepdim=True)
    z = scores * mask + diag * (1 - mask)
    row_max = crypten_compat.row_max(z, max_method)
    e = (z - row_max).exp() * mask
    denom = e.sum(-1, keepdim=True)
    return e * crypten_compat.reciprocal_positive(denom)


__all__ = [
    "activation",
    "causal_mask",
    "causal_softmax",
    "dyt",
    "erf_taylor",
    "gelu_erf",
    "gelu_sigmoid",
    "gelu_tanh_formula",
    "inv_sqrt_ranged",
    "inv_sqrt_wide",
    "layernorm",
    "leaky_relu",
    "relu",
]
