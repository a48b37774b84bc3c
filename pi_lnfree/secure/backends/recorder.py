"""The recording backend of the decoder structure: tensors are shapes, and each operator call is
recorded with the dimensions its cost depends on (the cost model's trace of a forward pass).

This is how the cost model knows the calls of a secure forward without a hand-written list: it
runs `pi_lnfree.secure.structure.Decoder` on shapes, as CrypTen's tuple provider traces the
requests of a real run. The recorded `Call`s use the calibrated kinds of
`pi_lnfree.secure.cost_features.features`; the `other` plumbing records `n`, the elements it touches
(the LM head's optional bias is a local addition, free like `other`; split and merge: the input's elements; an add of k terms: (k - 1) x elements; rotary: the
elements of q and k, plus H, T, hd and rd, the rotated dims, because SPU's product with the
public tables is not free: `pi_lnfree.secure.calls.rotary_dims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pi_lnfree.secure.backends.base import Sites
from pi_lnfree.secure.calls import rotary_dims
from pi_lnfree.secure.roles import CLIENT


@dataclass(frozen=True)
class Call:
    """One metered primitive call: its category, its kind (the primitive and, for activations,
    which one) and the shape numbers its cost depends on."""

    category: str
    kind: str
    dims: tuple[tuple[str, int], ...]

    @classmethod
    def make(cls, category: str, kind: str, **dims: int) -> Call:
        return cls(category, kind, tuple(sorted((k, int(v)) for k, v in dims.items())))

    @property
    def d(self) -> dict[str, int]:
        return dict(self.dims)


@dataclass(frozen=True)
class Shape:
    """A tensor of the trace: only its shape."""

    shape: tuple[int, ...]

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return math.prod(self.shape)

    def __getitem__(self, index: int) -> Shape:  # a learnable slope: one entry of the slopes vector
        return Shape(self.shape[1:])


class RecorderOps(Sites):
    """Records the calls of a forward pass by shape; `calls` is the trace, in call order."""

    def __init__(self):
        self.calls: list[Call] = []

    def _call(self, category: str, kind: str, **dims: int) -> None:
        self.calls.append(Call.make(category, kind, **dims))

    # -- inputs ------------------------------------------------------------------------------------
    def weight(self, tensor, shape: tuple[int, ...], transpose: bool) -> Shape:
        return Shape(tuple(reversed(shape)) if transpose else tuple(shape))

    def tokens(self, ids, seq_len: int, vocab_size: int) -> Shape:
        return Shape((1, seq_len, vocab_size))

    def transpose(self, w: Shape) -> Shape:
        return Shape(tuple(reversed(w.shape)))

    # -- operators ---------------------------------------------------------------------------------
    def embedding(self, onehot: Shape, table: Shape, positions: Shape | None = None) -> Shape:
        _, T, V = onehot.shape
        d = table.shape[1]
        self._call("embedding", "embedding", T=T, V=V, d=d, pos=int(positions is not None))
        return Shape((1, T, d))

    def linear(self, x: Shape, weight_t: Shape, bias: Shape | None = None) -> Shape:
        n_in, n_out = weight_t.shape
        T = x.shape[1]
        self._call("linear", "linear", T=T, i=n_in, o=n_out, bias=int(bias is not None))
        return Shape((1, T, n_out))

    def attention_scores(self, q: Shape, k: Shape) -> Shape:
        _, H, T, hd = q.shape
        self._call("attention", "attention_scores", H=H, T=T, hd=hd)
        return Shape((1, H, T, T))

    def softmax(self, scores: Shape) -> Shape:
        _, H, T, _ = scores.shape
        self._call("softmax", "softmax", H=H, T=T)
        return scores

    def attention_mix(self, probs: Shape, v: Shape) -> Shape:
        _, H, T, hd = v.shape
        self._call("attention", "attention_mix", H=H, T=T, hd=hd)
        return v

    def layernorm(self, x: Shape, gamma, beta, eps: float) -> Shape:
        _, T, d = x.shape
        self._call("layernorm", "layernorm", T=T, d=d)
        return x

    def dyt(self, x: Shape, alpha, gamma, beta) -> Shape:
        _, T, d = x.shape
        self._call("layernorm", "dyt", T=T, d=d)
        return x

    def activation(self, x: Shape, name: str, slope=None) -> Shape:
        _, T, n = x.shape
        self._call("activation", f"activation:{name}", T=T, n=n)
        return x

    def lm_head(self, x: Shape, weight_t: Shape, bias: Shape | None = None, reveal_to: int = CLIENT) -> Shape:
        _, T, d = x.shape
        V = weight_t.shape[1]
        self._call("lm_head", "lm_head", T=T, d=d, V=V)
        return Shape((1, T, V))

    # -- plumbing (`other`) ------------------------------------------------------------------------
    def split_heads(self, qkv: Shape, n_head: int) -> tuple[Shape, Shape, Shape]:
        B, T, C3 = qkv.shape
        self._call("other", "other", n=qkv.numel())
        head = Shape((B, n_head, T, C3 // 3 // n_head))
        return head, head, head

    def merge_heads(self, y: Shape) -> Shape:
        B, H, T, hd = y.shape
        self._call("other", "other", n=y.numel())
        return Shape((B, T, H * hd))

    def add(self, *xs: Shape) -> Shape:
        self._call("other", "other", n=(len(xs) - 1) * xs[0].numel())
        return xs[0]

    def rotary(self, q: Shape, k: Shape, cos, sin) -> tuple[Shape, Shape]:
        _, H, T, hd = q.shape
        self._call("other", "other", **rotary_dims(H, T, hd, int(cos.shape[-1])))
        return q, k


__all__ = ["Call", "RecorderOps", "Shape"]
