"""The SecretFlow SPU backend of the decoder structure (`pi_lnfree.secure.structure`): SPU values
held by every party's runtime, each operator one SPU program run, metered into its category.

Runs inside the SPU environment (`make spu`: spu 0.9.5, jax, numpy < 2), one process per party
(`pi_lnfree.secure.spu_party`). A backend tensor is a `SpuTensor`: the name of a value in each
party's SPU symbol table and its public shape. Every operator is a small jax function compiled by
SPU once per shape (`_Program`) and run by all parties in lockstep; its outputs stay secret-shared
in the symbol tables for the next operator, so each call is metered on its own.

Metering: SPU does not return communication counters to Python; with `enable_pphlo_profile` it
logs, after every run, "Link details: total send bytes B, recv bytes R, send actions A, ...".
`LinkLog` reads this party's log file after each run; B and A are this party's bytes sent and
messages sent. `SpuOps.counters()` is the `Meter`'s stats function: cumulative bytes sent and send
actions (the `rounds` of the result: one message per party per round in SEMI2K; CHEETAH's OT and
HE steps may send several messages per round). The input sharing and the logits' opening are sent
by this module over the same link and counted by their payload bytes and one action each (the
opening sends the shares' bare ring elements, so its bytes are exactly 8 per element in FM64).

The maths, written once in jax.numpy (SPU's fixed-point kernels do the rest):

* causal softmax with an exact mask: future scores are replaced by the row's diagonal score (a
  select on a public 0/1 mask: no communication) so the row max is over visible entries only;
  the exponentials of (score - max) are multiplied by the public mask, so future entries add
  exactly zero to the row sum; one reciprocal per row. (An additive -1e4 mask leaves large
  values for SPU's fixed-point exp and gave large logit errors.)
* LayerNorm: mean, population variance, `lax.rsqrt(var + eps)`, affine;
* GELU (erf form) by the profile's method: "tanh" formula (SPU's tanh), "erf" (SPU's erf),
  "sigmoid" x * sigmoid(1.702 x) (the profile's `sigmoid_mode`); GELU (tanh form) always by the
  tanh formula; ReLU `max(x, 0)`; (learnable) leaky ReLU `r + slope * (x - r)`, r = relu(x);
  Dynamic Tanh `tanh(alpha x) * gamma + beta` (category `layernorm`).
* plumbing (`other`): head split/merge and residual sums are local; rotary positions multiply by
  the public cos/sin tables, and SPU truncates that fixed-point product interactively (SEMI2K:
  one message per party; CrypTen's two-party truncation is local).
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import spu
import spu.libspu as libspu
from jax import lax
from spu.utils import frontend as spu_fe

from pi_lnfree.secure.backends.base import Sites
from pi_lnfree.secure.roles import CLIENT, SERVER

LINK_LINE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+)")
_PROTOCOLS = {"SEMI2K": libspu.ProtocolKind.SEMI2K, "CHEETAH": libspu.ProtocolKind.CHEETAH,
              "ABY3": libspu.ProtocolKind.ABY3}
_FIELDS = {"FM64": libspu.FieldType.FM64, "FM128": libspu.FieldType.FM128}
_EXP = {"taylor": libspu.RuntimeConfig.ExpMode.EXP_TAYLOR, "pade": libspu.RuntimeConfig.ExpMode.EXP_PADE}
_SIGMOID = {"real": libspu.RuntimeConfig.SigmoidMode.SIGMOID_REAL, "mm1": libspu.RuntimeConfig.SigmoidMode.SIGMOID_MM1,
            "seg3": libspu.RuntimeConfig.SigmoidMode.SIGMOID_SEG3}


def runtime_config(profile) -> libspu.RuntimeConfig:
    """The SPU runtime configuration of an `engine = "spu"` protocol profile."""
    cfg = libspu.RuntimeConfig(protocol=_PROTOCOLS[profile.spu_protocol], field=_FIELDS[profile.spu_field],
                               fxp_fraction_bits=profile.precision_bits)
    cfg.fxp_exp_mode = _EXP[profile.spu_exp_mode]
    cfg.fxp_exp_iters = profile.spu_exp_iters
    cfg.sigmoid_mode = _SIGMOID[profile.spu_sigmoid_mode]
    cfg.fxp_div_goldschmidt_iters = profile.spu_div_iters
    cfg.enable_lower_accuracy_rsqrt = bool(profile.spu_lower_accuracy_rsqrt)
    cfg.enable_pphlo_profile = True  # the per-run "Link details" line the meter reads
    if profile.spu_protocol == "SEMI2K":
        cfg.beaver_type = libspu.RuntimeConfig.BeaverType.TrustedFirstParty
    return cfg


class LinkLog:
    """This party's SPU log file; `next_run()` returns (bytes sent, send actions) of the last run."""

    def __init__(self, path: str | Path, wait_s: float = 5.0):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.wait_s = wait_s

    def next_run(self) -> tuple[int, int]:
        """Consume the log up to the next complete "Link details" line; raises `RuntimeError` when
        none appears within `wait_s` seconds (SPU writes it before `Runtime.run` returns)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(self.offset)
                    data = f.read()
                consumed = 0
                for line in data.splitlines(keepends=True):
                    if not line.endswith(b"\n"):
                        break  # a line still being written
                    consumed += len(line)
                    m = LINK_LINE.search(line.decode("utf-8", "replace"))
                    if m:
                        self.offset += consumed
                        return int(m.group(1)), int(m.group(3))
            if time.monotonic() > deadline:
                raise RuntimeError(f"SPU wrote no 'Link details' line to {self.path} after a run")
            time.sleep(0.01)


def send_share(link, dst: int, share: libspu.Share) -> int:
    """Send one party's share (meta, chunk sizes, chunks) to `dst`; the payload bytes."""
    chunks = list(share.share_chunks)
    link.send(dst, share.meta)
    link.send(dst, ",".join(str(len(c)) for c in chunks))
    for c in chunks:
        link.send(dst, c)
    return len(share.meta) + sum(len(c) for c in chunks)


def recv_share(link, src: int) -> libspu.Share:
    """Receive a share sent by `send_share`."""
    share = libspu.Share()
    share.meta = link.recv(src)
    sizes = [int(s) for s in link.recv(src).decode().split(",") if s]
    share.share_chunks = [link.recv(src) for _ in sizes]
    return share


def share_content(share: libspu.Share) -> bytes:
    """The raw ring elements of one party's share, without SPU's protobuf framing."""
    parts = []
    for c in share.share_chunks:
        chunk = libspu.ValueChunk()
        chunk.ParseFromString(c)
        parts.append(chunk.content)
    return b"".join(parts)


def share_from_content(meta: bytes, content: bytes) -> libspu.Share:
    """A share of type `meta` holding the ring elements `content` (`share_content`'s bytes)."""
    chunk = libspu.ValueChunk()
    chunk.total_bytes, chunk.chunk_offset, chunk.content = len(content), 0, content
    share = libspu.Share()
    share.meta, share.share_chunks = meta, [chunk.SerializeToString()]
    return share


def share_ring_elements(share: libspu.Share) -> np.ndarray:
    """The ring elements of one party's share (uint64 for FM64), for the tests' view check."""
    return np.frombuffer(share_content(share), dtype=np.uint64)


class SpuTensor:
    """A secret value in every party's symbol table: its name and public shape."""

    __slots__ = ("ops", "name", "shape", "__weakref__")

    def __init__(self, ops: SpuOps, name: str, shape: tuple[int, ...]):
        self.ops, self.name, self.shape = ops, name, tuple(shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index):
        # a view of a weight (a learnable slope), no operator: unmetered, like CrypTen's indexing
        return self.ops.run1("index", (repr(index),), lambda a: a[index], self)

    def __del__(self):
        try:
            self.ops.rt.del_var(self.name)
        except Exception:  # noqa: BLE001 - the runtime may be gone at interpreter exit
            pass


# ---------------------------------------------------------------------------------------------
# the maths (jax.numpy; traced once per shape and compiled by SPU)


def causal_softmax(s):
    """Softmax over the last dim of (B, H, T, T) scores with the exact public causal mask."""
    T = s.shape[-1]
    visible = np.tril(np.ones((T, T), dtype=bool))
    diag = jnp.diagonal(s, axis1=-2, axis2=-1)[..., None]
    z = jnp.where(visible, s, diag)
    z = z - jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z) * visible.astype(np.float32)
    return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def layernorm(x, gamma=None, beta=None, eps: float = 1e-5):
    """LayerNorm over the last dim (population variance, eps inside the square root)."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    y = xc * lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    if gamma is not None:
        y = y * gamma
    return y if beta is None else y + beta


def gelu_tanh_formula(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def activation(x, name: str, gelu_method: str, slope=None):
    """One FFN activation by name (see `pi_lnfree.model.activate`); `slope` a float or a value."""
    if name == "relu":
        return jnp.maximum(x, 0.0)
    if name in ("leaky_relu", "learnable_leaky"):
        r = jnp.maximum(x, 0.0)
        return r + (x - r) * slope
    if name == "gelu_tanh" or (name == "gelu" and gelu_method == "tanh"):
        return gelu_tanh_formula(x)
    if name == "gelu" and gelu_method == "erf":
        return 0.5 * x * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))
    if name == "gelu" and gelu_method == "sigmoid":
        return x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"activation {name!r} with GELU method {gelu_method!r} is not supported under SPU")


def split_heads(qkv, n_head: int):
    B, T, C3 = qkv.shape
    C = C3 // 3
    return tuple(jnp.swapaxes(qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, C // n_head), 1, 2)
                 for i in range(3))


def merge_heads(y):
    B, H, T, hd = y.shape
    return jnp.swapaxes(y, 1, 2).reshape(B, T, H * hd)


def rotate(x, cos: np.ndarray, sin: np.ndarray):
    """GPT-NeoX partial rotary positions; cos/sin are public (T_max, dim) tables."""
    T, dim = x.shape[-2], cos.shape[-1]
    cos, sin = cos[:T].astype(np.float32), sin[:T].astype(np.float32)
    rot, half = x[..., :dim], dim // 2
    rotated = rot * cos + jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1) * sin
    return rotated if dim == x.shape[-1] else jnp.concatenate([rotated, x[..., dim:]], axis=-1)


# ---------------------------------------------------------------------------------------------
# the backend


class SpuOps(Sites):
    """The structure's operations interface on one party's SPU runtime.

    `link`: this party's `libspu.link.Context`; `log`: its `LinkLog`; `meter`: a
    `pi_lnfree.secure.meter.Meter` over `counters` (None: unmetered, e.g. while loading weights).
    """

    def __init__(self, link, profile, log: LinkLog, meter=None):
        self.link, self.profile, self.log, self.meter = link, profile, log, meter
        self.rank, self.world = link.rank, link.world_size
        self.config = runtime_config(profile)
        self.rt = spu.Runtime(link, self.config)
        self.io = spu.Io(self.world, self.config)
        self._programs: dict[tuple, tuple[bytes, list[tuple[int, ...]]]] = {}
        self._next = 0
        self.sent_bytes = 0
        self.send_actions = 0
        self.input_bytes = 0  # sharing of weights and tokens: outside the operators
        self.compile_seconds = 0.0
        self.captured: dict[str, np.ndarray] = {}  # "tokens": this party's token share (tests)
        self.capture = False

    def counters(self) -> dict[str, float]:
        """Cumulative bytes sent and send actions of this party (the meter's stats function)."""
        return {"bytes": self.sent_bytes, "rounds": self.send_actions}

    # -- running programs --------------------------------------------------------------------
    def _fresh(self) -> str:
        self._next += 1
        return f"v{self._next}"

    def run(self, kind: str, params: tuple, fn, *inputs: SpuTensor) -> list[SpuTensor]:
        """Run `fn` (jax) on secret inputs in every party; its outputs as new secret values."""
        key = (kind, params, tuple(t.shape for t in inputs))
        if key not in self._programs:
            t0 = time.perf_counter()
            args = [np.zeros(t.shape, np.float32) for t in inputs]
            names = [f"in{i}" for i in range(len(inputs))]
            exe, out = spu_fe.compile(spu_fe.Kind.JAX, fn, args, {}, names, [libspu.Visibility.VIS_SECRET] * len(args),
                                      lambda outs: [f"out{i}" for i in range(len(outs))])
            shapes = [tuple(o.shape) for o in jax.tree_util.tree_leaves(out)]
            self._programs[key] = (exe.code, shapes)
            self.compile_seconds += time.perf_counter() - t0
        code, shapes = self._programs[key]
        outs = [self._fresh() for _ in shapes]
        self.rt.run(libspu.Executable(name=kind, input_names=[t.name for t in inputs], output_names=outs, code=code))
        sent, actions = self.log.next_run()
        self.sent_bytes += sent
        self.send_actions += actions
        return [SpuTensor(self, n, s) for n, s in zip(outs, shapes, strict=True)]

    def run1(self, kind: str, params: tuple, fn, *inputs: SpuTensor) -> SpuTensor:
        return self.run(kind, params, fn, *inputs)[0]

    @contextmanager
    def _op(self, category: str):
        if self.meter is None:
            yield
        else:
            with self.meter.op(category):
                yield

    def warm_up(self) -> int:
        """Run one small product and comparison of secrets, unmetered, so that a protocol's one-off
        session setup (CHEETAH: HE keys, base OTs) is not charged to the first operator; the
        bytes this party sent for it."""
        before, inputs = self.sent_bytes, self.input_bytes
        a = self.share_input(SERVER, np.ones((2, 2), np.float32) if self.rank == SERVER else None, (2, 2))
        self.run1("warm_up", (), lambda m: jnp.maximum(m @ m, 1.0), a)
        self.input_bytes = inputs
        return self.sent_bytes - before

    # -- inputs ------------------------------------------------------------------------------
    def share_input(self, owner: int, value: np.ndarray | None, shape: tuple[int, ...]) -> SpuTensor:
        """Secret-share `value` (held by `owner`, None elsewhere) of public `shape`."""
        name = self._fresh()
        if self.rank == owner:
            shares = self.io.make_shares(np.ascontiguousarray(value, dtype=np.float32), libspu.Visibility.VIS_SECRET)
            for r in range(self.world):
                if r != owner:
                    self.input_bytes += send_share(self.link, r, shares[r])
            mine = shares[owner]
        else:
            mine = recv_share(self.link, owner)
        self.rt.set_var(name, mine)
        return SpuTensor(self, name, shape)

    def weight(self, tensor, shape: tuple[int, ...], transpose: bool) -> SpuTensor:
        """Share one server tensor ((in, out) if `transpose`); the others pass None."""
        shape = tuple(shape)
        if transpose:
            shape = shape[::-1]
        value = None
        if tensor is not None:
            value = tensor.detach().float().numpy()
            value = value.T if transpose else value
        return self.share_input(SERVER, value, shape)

    def tokens(self, ids, seq_len: int, vocab_size: int) -> SpuTensor:
        """Share the client's one-hot rows (1, T, V); the others pass None."""
        value = None
        if ids is not None:
            value = np.zeros((1, seq_len, vocab_size), np.float32)
            value[0, np.arange(seq_len), np.asarray(ids, dtype=np.int64)] = 1.0
        t = self.share_input(CLIENT, value, (1, seq_len, vocab_size))
        if self.capture and self.rank != CLIENT:
            self.captured["tokens"] = share_ring_elements(self.rt.get_var(t.name))
        return t

    # -- operators, one category each -------------------------------------------------------
    def embedding(self, onehot, table, positions=None):
        """`embedding`: one-hot (1, T, V) @ table (V, d) [+ the first T position rows]."""
        with self._op("embedding"):
            if positions is None:
                return self.run1("embedding", (), lambda o, w: o @ w, onehot, table)
            return self.run1("embedding_pos", (), lambda o, w, p: o @ w + p[: o.shape[1]], onehot, table, positions)

    def linear(self, x, weight_t, bias=None):
        """`linear`: x @ W^T + b with the pre-transposed weight (in, out)."""
        with self._op("linear"):
            if bias is None:
                return self.run1("linear", (), lambda a, w: a @ w, x, weight_t)
            return self.run1("linear_bias", (), lambda a, w, b: a @ w + b, x, weight_t, bias)

    def attention_scores(self, q, k):
        """`attention`: Q K^T / sqrt(hd), all heads (1, H, T, T)."""
        with self._op("attention"):
            scale = 1.0 / math.sqrt(q.size(-1))
            return self.run1("scores", (), lambda a, b: (a * scale) @ jnp.swapaxes(b, -1, -2), q, k)

    def attention_mix(self, probs, v):
        """`attention`: probabilities (1, H, T, T) @ values (1, H, T, hd)."""
        with self._op("attention"):
            return self.run1("mix", (), lambda p, w: p @ w, probs, v)

    def softmax(self, scores):
        """`softmax`: causal softmax of all heads of one layer in one run."""
        with self._op("softmax"):
            return self.run1("softmax", (), causal_softmax, scores)

    def layernorm(self, x, gamma, beta, eps: float):
        """`layernorm`: LayerNorm over the last dim (gamma/beta may be None)."""
        with self._op("layernorm"):
            args = [t for t in (gamma, beta) if t is not None]
            has = (gamma is not None, beta is not None)

            def fn(a, *gb):
                it = iter(gb)
                return layernorm(a, next(it) if has[0] else None, next(it) if has[1] else None, eps)

            return self.run1("layernorm", (has, eps), fn, x, *args)

    def dyt(self, x, alpha, gamma, beta):
        """`layernorm`: Dynamic Tanh in place of a norm, tanh(alpha x) * gamma + beta (SPU's tanh)."""
        with self._op("layernorm"):
            return self.run1("dyt", (), lambda a, al, g, b: jnp.tanh(al * a) * g + b, x, alpha, gamma, beta)

    def activation(self, x, name: str, slope=None):
        """`activation`: the FFN nonlinearity of one layer (slope: public float or a value)."""
        with self._op("activation"):
            method = self.profile.gelu
            if isinstance(slope, SpuTensor):
                return self.run1("act", (name, method), lambda a, s: activation(a, name, method, s), x, slope)
            return self.run1("act", (name, method, slope), lambda a: activation(a, name, method, slope), x)

    def lm_head(self, x, weight_t, bias=None, reveal_to: int = CLIENT):
        """`lm_head`: logits = x @ W^T (+ b), opened to the client only: every other party sends it
        its share (counted here). The client gets a float numpy array (1, T, V); the others None."""
        with self._op("lm_head"):
            if bias is None:
                logits = self.run1("lm_head", (), lambda a, w: a @ w, x, weight_t)
            else:
                logits = self.run1("lm_head_bias", (), lambda a, w, b: a @ w + b, x, weight_t, bias)
            return self.reveal(logits, reveal_to)

    def reveal(self, t: SpuTensor, to: int):
        """Open `t` to party `to` alone: every other party sends it the ring elements of its
        share (bytes and one action counted here; the share's type and shape are public, so `to`
        rebuilds the peer's share with its own share's meta and no framing is sent, which keeps
        the cost exactly linear in the elements). `to` gets a float numpy array; the others None."""
        share = self.rt.get_var(t.name)
        if self.rank != to:
            payload = share_content(share)
            self.link.send(to, payload)
            self.sent_bytes += len(payload)
            self.send_actions += 1
            return None
        return self.io.reconstruct([share if r == to else share_from_content(share.meta, self.link.recv(r))
                                    for r in range(self.world)])

    # -- plumbing (`other`: local maths) -----------------------------------------------------
    def other_fn(self, kind: str, params: tuple, fn, *inputs):
        with self._op("other"):
            return self.run1(kind, params, fn, *inputs)

    def transpose(self, w):
        return self.other_fn("transpose", (), lambda a: a.T, w)

    def split_heads(self, qkv, n_head: int):
        with self._op("other"):
            return tuple(self.run("split_heads", (n_head,), lambda a: split_heads(a, n_head), qkv))

    def merge_heads(self, y):
        return self.other_fn("merge_heads", (), merge_heads, y)

    def add(self, *xs):
        return self.other_fn("add", (len(xs),), lambda *a: sum(a[1:], a[0]), *xs)

    def rotary(self, q, k, cos, sin):
        c, s = np.asarray(cos, np.float32), np.asarray(sin, np.float32)
        with self._op("other"):
            return tuple(self.run("rotary", (c.shape,), lambda a, b: (rotate(a, c, s), rotate(b, c, s)), q, k))


__all__ = [
    "LinkLog",
    "SpuOps",
    "SpuTensor",
    "causal_softmax",
    "layernorm",
    "recv_share",
    "runtime_config",
    "send_share",
    "share_content",
    "share_from_content",
    "share_ring_elements",
]
