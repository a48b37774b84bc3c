"""Valid input ranges of the secure approximations, derived from the profile's settings.

Every nonlinearity of the CrypTen engine is an approximation that is accurate only on part of
the real line. This module writes each one again in float64 on plain tensors, step for step as
CrypTen 0.4.1 (`crypten/common/functions/approximations.py`) and `pi_lnfree.secure.layers`
compute it (fixed-point rounding aside), and derives its valid range by scanning a grid against
the exact function: the largest interval around the function's normal operating point on which
the error stays within the tolerance below.

| approximation          | used by                       | exact            | tolerance             |
|------------------------|-------------------------------|------------------|-----------------------|
| exp, limit (1+x/2^n)^2^n | softmax, on z - max <= 0    | e^x              | 1e-2 absolute         |
| reciprocal, Newton     | softmax row sum (>= 1)        | 1/x              | 1e-1 relative         |
| GELU tanh formula      | gelu (profile gelu="tanh"), gelu_tanh | tanh-GELU | 1e-2 x max(1, abs(x)) |
| GELU x sigmoid(1.702x) | gelu (gelu="sigmoid")         | x sigmoid(1.702x)| 1e-2 x max(1, abs(x)) |
| tanh (Dynamic Tanh)    | DyT, on alpha x               | tanh             | 1e-2 absolute         |
| inv_sqrt (CrypTen)     | LayerNorm (layernorm_inv_sqrt="crypten") | 1/sqrt(v) | 1e-2 relative   |

Notes on the sources: CrypTen's exp squares `1 + x/2^n` n times (n = exp_iterations); for
x < -2^n the base is negative and for x < -2^(n+1) its magnitude exceeds 1, so the result grows
without bound. Its reciprocal starts Newton's iteration y <- 2y - x y^2 from 3 exp(1 - 2x) + 0.003,
so its domain also depends on exp_iterations; with 16 fractional bits the square of a small y
loses most of its digits, which leaves 1/x a few percent off for x in about [40, 200] and far
off beyond (hence the loose tolerance: it separates a degraded result from a wrong one). Its sigmoid (method "reciprocal") is
1 / (1 + exp(-|x|)) mirrored for x < 0, with 3 Newton steps from 0.75; tanh(x) = 2 sigmoid(2x) - 1.
The range-finding inverse square root of `layers.inv_sqrt_ranged` is valid on [2^-16, 2^16] by
construction; the Taylor erf of `layers.gelu_erf` switches to ReLU beyond the profile's clip and
has no input limit. CrypTen's max and ReLU are exact comparisons.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from pi_lnfree.secure.profile import ProtocolProfile

Array = torch.Tensor


FRAC_BITS = 16  # fixed-point fractional bits the twins round to (the profiles' precision_bits)


def fxp(x: Array, frac_bits: int = FRAC_BITS) -> Array:
    """Round to the fixed-point grid as a truncated secret product does (toward -inf)."""
    return torch.floor(x * 2.0**frac_bits) / 2.0**frac_bits


def exp_limit(x: Array, iterations: int, frac_bits: int = FRAC_BITS) -> Array:
    """CrypTen's exp: (1 + x / 2^n)^(2^n) by n squarings, each rounded to fixed point."""
    y = fxp(1 + x / 2**iterations, frac_bits)
    for _ in range(iterations):
        y = fxp(y * y, frac_bits)
    return y


def reciprocal_newton(x: Array, iterations: int, exp_iterations: int, initial: float | None = None,
                      frac_bits: int = FRAC_BITS) -> Array:
    """CrypTen's reciprocal (method NR, input known positive): y <- 2y - x y^2, each product
    rounded to fixed point (y^2 of a small y loses most of its digits: the limit at large x)."""
    if initial is None:
        y = fxp(3 * exp_limit(1 - 2 * x, exp_iterations, frac_bits) + 0.003, frac_bits)
    else:
        y = torch.full_like(x, initial)
    for _ in range(iterations):
        y = 2 * y - fxp(fxp(y * y, frac_bits) * x, frac_bits)
    return y


def sigmoid_reciprocal(x: Array, exp_iterations: int) -> Array:
    """CrypTen's sigmoid, method "reciprocal": 1 / (1 + exp(-|x|)), mirrored for x < 0."""
    r = reciprocal_newton(exp_limit(-x.abs(), exp_iterations) + 1, 3, exp_iterations, initial=0.75)
    return torch.where(x < 0, 1 - r, r)


def tanh_reciprocal(x: Array, exp_iterations: int) -> Array:
    """CrypTen's tanh, method "reciprocal": 2 sigmoid(2x) - 1."""
    return 2 * sigmoid_reciprocal(2 * x, exp_iterations) - 1


def gelu_tanh_formula(x: Array, exp_iterations: int) -> Array:
    """`layers.gelu_tanh_formula` with CrypTen's tanh."""
    inner = (x + 0.044715 * x**3) * math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + tanh_reciprocal(inner, exp_iterations))


def gelu_sigmoid(x: Array, exp_iterations: int) -> Array:
    """`layers.gelu_sigmoid`: x sigmoid(1.702 x) with CrypTen's sigmoid."""
    return x * sigmoid_reciprocal(1.702 * x, exp_iterations)


def inv_sqrt_crypten(v: Array, iterations: int, wide: bool = False) -> Array:
    """CrypTen's inv_sqrt (guess exp(-(v/2 + 0.2)) 2.2 + 0.2 - v/1024, then Newton), with the
    exp of the profile; `wide`: `layers.inv_sqrt_wide` (variances above 64 scaled by 1/256)."""
    def core(u: Array) -> Array:
        y = torch.exp(-(u / 2 + 0.2)) * 2.2 + 0.2 - u / 1024
        for _ in range(iterations):
            y = y * (3 - u * y * y) / 2
        return y

    if not wide:
        return core(v)
    big = v > 64.0
    return torch.where(big, core(v / 256) / 16, core(v))


@dataclass(frozen=True)
class ValidRange:
    """Inputs on which one approximation meets its tolerance: [low, high] (inf for no limit)."""

    name: str
    low: float
    high: float
    tolerance: str
    source: str
    sides: str = "both"  # which limits an input can approach: "both", "low" or "high"

    def contains(self, lo: float, hi: float) -> bool:
        return self.low <= lo and hi <= self.high

    def headroom(self, lo: float, hi: float) -> float:
        """How far the observed [lo, hi] may grow before leaving the range, as a fraction of the
        range's own limit on the side that binds first (negative when already outside)."""
        rooms = []
        if self.sides != "low" and math.isfinite(self.high) and self.high != 0:
            rooms.append((self.high - hi) / abs(self.high))
        if self.sides != "high" and math.isfinite(self.low) and self.low != 0:
            rooms.append((lo - self.low) / abs(self.low))
        return min(rooms) if rooms else math.inf


def _interval(grid: Array, ok: Array, anchor: float) -> tuple[float, float]:
    """The contiguous run of `ok` grid points around `anchor`, as [low, high] of the grid."""
    i = int(torch.argmin((grid - anchor).abs()))
    if not bool(ok[i]):
        return math.nan, math.nan
    lo = i
    while lo > 0 and bool(ok[lo - 1]):
        lo -= 1
    hi = i
    while hi < len(grid) - 1 and bool(ok[hi + 1]):
        hi += 1
    low = -math.inf if lo == 0 else float(grid[lo])
    high = math.inf if hi == len(grid) - 1 else float(grid[hi])
    return low, high


@functools.cache
def exp_range(exp_iterations: int, frac_bits: int = FRAC_BITS) -> ValidRange:
    x = torch.linspace(-4.0 * 2**exp_iterations, 0.0, 100_001, dtype=torch.float64)
    ok = (exp_limit(x, exp_iterations, frac_bits) - torch.exp(x)).abs() <= 1e-2
    low, _ = _interval(x, ok, 0.0)
    return ValidRange("softmax exp", low, 0.0, "1e-2 absolute",
                      f"CrypTen exp (1 + x/2^{exp_iterations})^(2^{exp_iterations}), on z - row max", "low")


@functools.cache
def reciprocal_range(nr_iters: int, exp_iterations: int, frac_bits: int = FRAC_BITS) -> ValidRange:
    x = torch.logspace(0, 5, 50_001, dtype=torch.float64)  # row sums are >= 1
    ok = ((reciprocal_newton(x, nr_iters, exp_iterations, frac_bits=frac_bits) * x) - 1).abs() <= 1e-1
    _, high = _interval(x, ok, 1.0)
    return ValidRange("softmax reciprocal", 1.0, high, "1e-1 relative",
                      f"CrypTen reciprocal, {nr_iters} Newton steps from 3 exp(1 - 2x) + 0.003, on the row sum", "high")


def _gelu_like_range(name: str, approx: Array, exact: Array, x: Array, source: str) -> ValidRange:
    ok = (approx - exact).abs() <= 1e-2 * x.abs().clamp(min=1.0)
    low, high = _interval(x, ok, 0.0)
    return ValidRange(name, low, high, "1e-2 x max(1, |x|)", source)


@functools.cache
def activation_range(profile: ProtocolProfile, activation: str) -> ValidRange | None:
    """The valid range of one FFN activation under `profile`, or None when it has no input limit
    (ReLU and leaky ReLU are exact; the Taylor-erf GELU switches to ReLU beyond its clip)."""
    n = profile.exp_iterations
    x = torch.linspace(-4096.0, 4096.0, 102_401, dtype=torch.float64)
    method = "tanh" if activation == "gelu_tanh" else profile.gelu if activation == "gelu" else None
    if method == "tanh":
        exact = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return _gelu_like_range("GELU (tanh formula)", gelu_tanh_formula(x, n), exact, x,
                                f"tanh(u) = 2 sigmoid(2u) - 1 with CrypTen's exp, exp_iterations={n}")
    if method == "sigmoid":
        exact = x * torch.sigmoid(1.702 * x)
        return _gelu_like_range("GELU (x sigmoid(1.702x))", gelu_sigmoid(x, n), exact, x,
                                f"CrypTen sigmoid with exp_iterations={n}")
    return None


@functools.cache
def tanh_range(profile: ProtocolProfile) -> ValidRange:
    """Valid inputs of CrypTen's tanh (Dynamic Tanh's alpha x) under `profile`."""
    x = torch.linspace(-4096.0, 4096.0, 102_401, dtype=torch.float64)
    ok = (tanh_reciprocal(x, profile.exp_iterations) - torch.tanh(x)).abs() <= 1e-2
    low, high = _interval(x, ok, 0.0)
    return ValidRange("Dynamic Tanh tanh(alpha x)", low, high, "1e-2 absolute",
                      f"tanh(u) = 2 sigmoid(2u) - 1 with CrypTen's exp, exp_iterations={profile.exp_iterations}")


@functools.cache
def layernorm_range(profile: ProtocolProfile) -> ValidRange:
    """Valid variances (+ eps) of the profile's LayerNorm inverse square root."""
    if profile.layernorm_inv_sqrt == "ranged":
        return ValidRange("LayerNorm 1/sqrt(variance)", 2.0**-16, 2.0**16, "4e-5 relative (3 Newton steps)",
                          "range-finding guess over 32 powers of two (layers.inv_sqrt_ranged)")
    v = torch.logspace(-8, 8, 16_001, dtype=torch.float64)
    approx = inv_sqrt_crypten(v, profile.sqrt_nr_iters, profile.layernorm_wide_range)
    ok = (approx * v.sqrt() - 1).abs() <= 1e-2
    low, high = _interval(v, ok, 1.0)
    return ValidRange("LayerNorm 1/sqrt(variance)", low, high, "1e-2 relative",
                      f"CrypTen inv_sqrt, {profile.sqrt_nr_iters} Newton steps"
                      + (", wide-range switch" if profile.layernorm_wide_range else ""))


def needed_exp_iterations(check, limit: int = 16) -> int | None:
    """The smallest exp_iterations (up to `limit`) for which `check(n)` holds, or None."""
    for n in range(1, limit + 1):
        if check(n):
            return n
    return None


__all__ = [
    "ValidRange",
    "activation_range",
    "exp_limit",
    "exp_range",
    "gelu_sigmoid",
    "gelu_tanh_formula",
    "inv_sqrt_crypten",
    "layernorm_range",
    "needed_exp_iterations",
    "reciprocal_newton",
    "reciprocal_range",
    "sigmoid_reciprocal",
    "tanh_range",
    "tanh_reciprocal",
]
