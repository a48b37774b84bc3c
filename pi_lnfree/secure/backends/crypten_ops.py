"""The CrypTen backend of the decoder structure: CrypTensors under real parties, every operator
call metered into its category (`pi_lnfree.secure.meter.CATEGORIES`).

Roles (`pi_lnfree.secure.roles`): the server's weights are shared with src=SERVER (`weight`), the
client's one-hot token rows with src=CLIENT (`tokens`); a party that does not hold an input shares
zeros of its public shape. The logits are opened to the client alone (`lm_head`, which counts the
opening). The maths of each operator is in `pi_lnfree.secure.layers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pi_lnfree.secure import crypten_compat, layers
from pi_lnfree.secure.backends.base import TensorOps
from pi_lnfree.secure.meter import Meter
from pi_lnfree.secure.profile import ProtocolProfile
from pi_lnfree.secure.roles import CLIENT, SERVER


def one_hot_rows(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(T,) token ids -> (1, T, V) float one-hot rows (the client's private input)."""
    return F.one_hot(tokens.long(), vocab_size).float().unsqueeze(0)


class CryptenOps(TensorOps):
    """Metered secure operators on CrypTensors; each runs under `meter.op(category)`."""

    def __init__(self, meter: Meter, profile: ProtocolProfile, device: str = "cpu"):
        self.meter = meter
        self.profile = profile
        self.device = device

    @staticmethod
    def cat(xs, dim: int = 0):
        return crypten_compat.get_crypten().cat(xs, dim=dim)

    # -- inputs (outside the meter: sharing happens once per session or per sequence) -----------
    def weight(self, tensor: torch.Tensor | None, shape: tuple[int, ...], transpose: bool):
        """Share one server tensor (src=SERVER); zeros of `shape` on the client."""
        t = tensor.float().to(self.device) if tensor is not None else torch.zeros(shape, device=self.device)
        enc = crypten_compat.cryptensor(t, src=SERVER, device=self.device)
        return enc.t() if transpose else enc

    def tokens(self, ids: torch.Tensor | None, seq_len: int, vocab_size: int):
        """Share the client's one-hot rows (src=CLIENT); zeros of (1, T, V) on the server."""
        rows = one_hot_rows(ids, vocab_size) if ids is not None else torch.zeros(1, seq_len, vocab_size)
        return crypten_compat.cryptensor(rows.to(self.device), src=CLIENT, device=self.device)

    # -- metered operators -----------------------------------------------------------------------
    def other(self, fn, *args):
        """`other`: residual additions, rotary positions, head split/merge (local maths)."""
        with self.meter.op("other"):
            return fn(*args)

    def embedding(self, onehot, table, positions=None):
        """`embedding`: one-hot (B, T, V) of the client's tokens @ server table (V, d) [+ rows]."""
        with self.meter.op("embedding"):
            x = onehot.matmul(table)
            return x if positions is None else x + positions[: onehot.size(1)]

    def linear(self, x, weight_t, bias=None):
        """`linear`: x @ W^T + b with the server's pre-transposed weight (in, out)."""
        with self.meter.op("linear"):
            y = x.matmul(weight_t)
            return y if bias is None else y + bias

    def attention_scores(self, q, k):
        """`attention`: Q K^T / sqrt(hd), all heads batched (B, H, T, T)."""
        with self.meter.op("attention"):
            return q.mul(1.0 / math.sqrt(q.size(-1))).matmul(k.transpose(-2, -1))

    def attention_mix(self, probs, v):
        """`attention`: probabilities (B, H, T, T) @ values (B, H, T, hd)."""
        with self.meter.op("attention"):
            return probs.matmul(v)

    def softmax(self, scores):
        """`softmax`: causal softmax of all heads of one layer in one call."""
        with self.meter.op("softmax"):
            return layers.causal_softmax(scores, self.profile.max_method)

    def layernorm(self, x, gamma, beta, eps: float):
        """`layernorm`: LayerNorm over the last dim."""
        with self.meter.op("layernorm"):
            p = self.profile
            return layers.layernorm(x, gamma, beta, eps, wide=p.layernorm_wide_range, method=p.layernorm_inv_sqrt,
                                    iterations=p.sqrt_nr_iters)

    def dyt(self, x, alpha, gamma, beta):
        """`layernorm`: Dynamic Tanh in place of a norm (its own calibrated kind, `dyt`)."""
        with self.meter.op("layernorm"):
            return layers.dyt(x, alpha, gamma, beta)

    def activation(self, x, name: str, slope=None):
        """`activation`: the FFN nonlinearity of one layer."""
        with self.meter.op("activation"):
            p = self.profile
            return layers.activation(x, name, slope, p.gelu, p.gelu_erf_clip, p.erf_iterations)

    def lm_head(self, x, weight_t, bias=None, reveal_to: int = CLIENT):
        """`lm_head`: logits = x @ W^T (+ b), opened to the client only (the opening is counted
        here); None on the other party."""
        with self.meter.op("lm_head"):
            y = x.matmul(weight_t)
            return crypten_compat.get_plain_text(y if bias is None else y + bias, dst=reveal_to)


__all__ = ["CryptenOps", "one_hot_rows"]
