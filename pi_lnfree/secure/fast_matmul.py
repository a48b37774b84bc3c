"""Exact int64 ring matrix products through float64 BLAS (the "limb trick").

CrypTen computes on int64 shares: every Beaver matmul performs several int64 products
(the triple's ``c = a @ b`` and three correction terms), and their result only matters
modulo 2^64 (wrapping arithmetic).  Where PyTorch's int64 matmul is slow on a CPU, the same
wrapped product can be computed exactly with float64 BLAS:

* split each operand into balanced base-2^22 digits ("limbs")
  ``x = l0 + l1 * 2^22 + l2 * 2^44  (mod 2^64)`` with ``l0, l1`` in ``[-2^21, 2^21)`` and
  ``l2`` in ``[-2^19, 2^19)``; each limb is an integer a float64 holds exactly;
* only limb pairs with ``i + j <= 2`` reach below bit 64, so six float64 products suffice
  (16-bit limbs would need ten);
* every limb product is at most ``2^21 * 2^21 = 2^42`` in magnitude, so a dot product over at
  most ``2^11 = 2048`` terms, and every partial sum BLAS forms on the way, stays within
  ``2^53``: every float64 operation is exact whatever the summation order.  Longer inner
  dimensions are cut into blocks of 2048;
* the float64 results are converted back to int64, shifted by ``22 * (i + j)`` bits and
  added with int64 wrap-around, which is the ring's own addition.

The result therefore equals ``torch.matmul`` on int64 bit for bit for every input
(``tests/test_fast_matmul.py`` checks this with property tests and worst-case limbs).

Whether it is *faster* depends on the machine: some PyTorch builds / CPUs multiply int64
matrices at close to float64 BLAS speed, and then the six float64 products lose.
:func:`limbs_pay_off` measures this once per process.  This module is pure torch; the
patch into CrypTen lives in ``crypten_compat.install_fast_matmul``.
"""

from __future__ import annotations

import time
import types

import torch

LIMB_BITS = 22
N_LIMBS = 3  # ceil(64 / 22); the top limb carries the remaining 64 - 44 = 20 bits
# Largest |limb| is 2^21, so |limb product| <= 2^42 and 2048 terms sum to at most 2^53.
MAX_K_BLOCK = 2**53 // 2 ** (2 * (LIMB_BITS - 1))
# Memory cap for one block of float64 limbs of the right operand (bytes, all limbs together).
RIGHT_LIMB_BYTES = 96 * 2**20
# Products with fewer multiply-adds than this stay on torch's int64 matmul (call overhead).
MIN_WORK = 2**18

_PAIRS = [(i, j) for i in range(N_LIMBS) for j in range(N_LIMBS) if i + j < N_LIMBS]


def split_limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """Split an int64 tensor into ``N_LIMBS`` balanced float64 limbs.

    ``sum(limb[i] * 2**(LIMB_BITS * i))`` equals ``x`` modulo 2^64.  Intermediate int64
    arithmetic may wrap; that is harmless because only the value modulo 2^64 matters.
    """
    limbs = []
    rest = x
    for i in range(N_LIMBS):
        bits = LIMB_BITS if i < N_LIMBS - 1 else 64 - LIMB_BITS * i
        half = 1 << (bits - 1)
        limb = torch.bitwise_and(rest + half, (1 << bits) - 1).sub_(half)
        limbs.append(limb.to(torch.float64))
        if i < N_LIMBS - 1:
            rest = (rest - limb).bitwise_right_shift_(bits)
    return limbs


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> torch.Size:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError("ring_matmul expects two tensors")
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"ring_matmul expects int64 tensors, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"operands live on {a.device} and {b.device}")
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("both arguments to matmul need to be at least 1D")
    # Let torch validate the shapes and compute the broadcast result shape, without data.
    meta_a = torch.empty(a.shape, dtype=torch.float64, device="meta")
    meta_b = torch.empty(b.shape, dtype=torch.float64, device="meta")
    return torch.matmul(meta_a, meta_b).shape


def _column_block(b: torch.Tensor, k_block: int) -> int:
    """Columns of ``b`` per block so that its float64 limbs stay within RIGHT_LIMB_BYTES."""
    if b.dim() < 2:
        return 1
    batch = b.numel() // max(1, b.shape[-1] * b.shape[-2])
    per_column = max(1, batch * k_block * N_LIMBS * 8)
    return max(1, RIGHT_LIMB_BYTES // per_column)


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` for int64 tensors, modulo 2^64, computed with float64 BLAS.

    Same broadcasting rules as ``torch.matmul`` (vectors, batched and broadcast 3-D / 4-D
    operands).  Bit-identical to the wrapping int64 product for every input.
    """
    out_shape = _check_operands(a, b)
    out = torch.zeros(out_shape, dtype=torch.int64, device=a.device)
    k = a.shape[-1]
    n = b.shape[-1] if b.dim() >= 2 else 1
    k_block = min(MAX_K_BLOCK, max(k, 1))
    n_block = _column_block(b, k_block)
    for k0 in range(0, k, k_block):
        k1 = min(k, k0 + k_block)
        a_limbs = split_limbs(a[..., k0:k1])
        for n0 in range(0, n, n_block):
            n1 = min(n, n0 + n_block)
            if b.dim() >= 2:
                b_limbs = split_limbs(b[..., k0:k1, n0:n1])
                target = out[..., n0:n1] if n1 - n0 < n else out
            else:
                b_limbs = split_limbs(b[k0:k1])
                target = out
            for i, j in _PAIRS:
                part = torch.matmul(a_limbs[i], b_limbs[j]).to(torch.int64)
                target.add_(part.bitwise_left_shift_(LIMB_BITS * (i + j)))
    return out


def uses_limbs(a, b, args: tuple = (), kwargs: dict | None = None) -> bool:
    """True when ``matmul(a, b, *args, **kwargs)`` would take the limb path.

    Only plain CPU int64 tensors (not subclasses or CrypTen's CUDALongTensor), without
    ``out=`` or other extra arguments, and with at least ``MIN_WORK`` multiply-adds.
    """
    if args or kwargs:
        return False
    if type(a) is not torch.Tensor or type(b) is not torch.Tensor:
        return False
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        return False
    if a.device.type != "cpu" or b.device.type != "cpu" or a.dim() == 0 or b.dim() == 0:
        return False
    if a.requires_grad or b.requires_grad:
        return False
    try:
        out_shape = _check_operands(a, b)
    except (RuntimeError, ValueError):
        return False  # let torch raise its own error
    return out_shape.numel() * a.shape[-1] >= MIN_WORK


def fast_matmul(input, other, *args, **kwargs):
    """Drop-in ``torch.matmul``: the limb path for large CPU int64 products, torch otherwise."""
    if uses_limbs(input, other, args, kwargs):
        return ring_matmul(input, other)
    return torch.matmul(input, other, *args, **kwargs)


class _TorchWithFastMatmul(types.ModuleType):
    """A stand-in for the ``torch`` module whose ``matmul`` is :func:`fast_matmul`.

    Every other attribute is looked up on the real ``torch`` module, so code that reads
    ``torch.X`` through it behaves exactly as before.
    """

    def __getattr__(self, name):
        return getattr(torch, name)


_TORCH_WITH_FAST_MATMUL = _TorchWithFastMatmul("torch")
_TORCH_WITH_FAST_MATMUL.matmul = fast_matmul


def torch_with_fast_matmul() -> types.ModuleType:
    """The torch stand-in to assign to a module's global ``torch`` name (see crypten_compat)."""
    return _TORCH_WITH_FAST_MATMUL


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` after one warm-up call."""
    fn()  # warm up allocator and BLAS threads
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_speedup(m: int = 128, k: int = 768, n: int = 768, repeats: int = 3, seed: int = 0) -> dict:
    """Time torch's int64 matmul against :func:`ring_matmul` on one random (m,k)@(k,n) product.

    Returns ``{"int64_s", "limbs_s", "speedup"}`` (speedup = int64 time / limb time, best of
    ``repeats``).
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-(2**63), 2**63 - 1, (m, k), dtype=torch.int64, generator=gen)
    b = torch.randint(-(2**63), 2**63 - 1, (k, n), dtype=torch.int64, generator=gen)
    int64_s = best_seconds(lambda: torch.matmul(a, b), repeats)
    limbs_s = best_seconds(lambda: ring_matmul(a, b), repeats)
    return {"int64_s": int64_s, "limbs_s": limbs_s, "speedup": int64_s / limbs_s}


_PAYS_OFF: dict[float, bool] = {}


def limbs_pay_off(min_speedup: float = 1.2) -> bool:
    """Whether the limb path beats torch's int64 matmul on this machine (measured once, cached).

    The first call times one small product each way (`measure_speedup`). The decision is only
    about speed: both paths give identical results.
    """
    if min_speedup not in _PAYS_OFF:
        _PAYS_OFF[min_speedup] = measure_speedup()["speedup"] >= min_speedup
    return _PAYS_OFF[min_speedup]
