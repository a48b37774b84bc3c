"""Tensor plumbing shared by the backends whose tensors support torch-style indexing (CrypTen's
CrypTensor and torch.Tensor): head split and merge, residual sums, rotary positions, transposes.

Each runs through `self.other(fn, *args)`, which a backend may meter (CrypTen counts it as the
`other` category: local maths, no communication).
"""

from __future__ import annotations

from contextlib import contextmanager


def split_heads(qkv, n_head: int):
    """(B, T, 3C) fused projections -> q, k, v of shape (B, H, T, C / H)."""
    B, T, C3 = qkv.size()
    C = C3 // 3
    return tuple(qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, C // n_head).transpose(1, 2) for i in range(3))


def merge_heads(y):
    """(B, H, T, hd) -> (B, T, H * hd)."""
    B, H, T, hd = y.size()
    return y.transpose(1, 2).reshape(B, T, H * hd)


def add(*xs):
    """Elementwise sum of two or more tensors of one shape (the residual stream)."""
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def rotate(x, cos, sin, cat):
    """GPT-NeoX partial rotary positions on the first `cos.size(-1)` dims of (B, H, T, hd) `x`;
    `cos`/`sin` are public (T_max, dim) tables, so this is a public linear map of `x`."""
    T, dim = x.size(-2), cos.size(-1)
    cos, sin = cos[:T].to(x.device), sin[:T].to(x.device)
    rot, half = x[..., :dim], dim // 2
    rotated = rot * cos + cat([-rot[..., half:], rot[..., :half]], dim=-1) * sin
    return rotated if dim == x.size(-1) else cat([rotated, x[..., dim:]], dim=-1)


class Sites:
    """`site(label)`: the structure names where it is ("block 3 attention"); a backend reads it
    from `where` (the recorder and the range audit label their records with it)."""

    where: str = ""

    @contextmanager
    def site(self, label: str):
        outer, self.where = self.where, label
        try:
            yield
        finally:
            self.where = outer


class TensorOps(Sites):
    """The plumbing half of the structure's operations interface for tensor backends.

    Subclasses set `cat` (the backend's concatenation) and may override `other` to meter it.
    """

    @staticmethod
    def cat(xs, dim: int = 0):  # pragma: no cover - every subclass sets its own
        raise NotImplementedError

    def other(self, fn, *args):
        """Run local plumbing `fn(*args)`."""
        return fn(*args)

    def transpose(self, w):
        return w.t()

    def split_heads(self, qkv, n_head: int):
        return self.other(split_heads, qkv, n_head)

    def merge_heads(self, y):
        return self.other(merge_heads, y)

    def add(self, *xs):
        return self.other(add, *xs)

    def rotary(self, q, k, cos, sin):
        return self.other(lambda a, b: (rotate(a, cos, sin, self.cat), rotate(b, cos, sin, self.cat)), q, k)
