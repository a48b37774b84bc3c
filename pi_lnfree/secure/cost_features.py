"""Shape features of one primitive call: step 2 of the cost model (`pi_lnfree.secure.costmodel`).

`features(kind, dims, max_method, engine, share_bytes)` turns one recorded call (kind + shape
dims, `pi_lnfree.secure.backends.recorder`) into features in three groups: `size` (element
counts: bytes and dealer bytes are linear in them), `count` (call constants and sequential
steps: rounds and dealer requests) and `time` (local compute). CrypTen's follow its kernels
(`max_schedule`: the row max of each `max_method`); SPU profiles take SPU 0.9.5's where they
differ (`spu_max_steps`, its product tiling `spu_mmul_blocks`, attention and rotary positions).
`field_vector` gives the values one fitted field's coefficients multiply (`on_traffic`: a count
field fitted by least squares where the bytes are too).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from pi_lnfree.errors import UserError

GROUPS = ("size", "count", "time")
# which feature group each metered field is fitted on
FIELD_GROUP = {"bytes": "size", "dealer_bytes": "size", "rounds": "count", "dealer_requests": "count",
               "seconds": "time", "offline_seconds": "time"}
TIME_FIELDS = ("seconds", "offline_seconds")  # estimates (non-negative fits), not exact counts
PAIRWISE_PROD_LIMIT = 128  # CrypTen: all-pairs max multiplies (prod) below this, sums and compares above


@dataclass(frozen=True)
class PairwiseStage:
    """One all-pairs max (CrypTen's `pairwise` method) over rows of length `m`; each row of the
    input is `mult` rows here (the double-log recursion folds blocks of a row into rows)."""

    mult: int
    m: int

    @property
    def row_length(self) -> int:  # CrypTen treats a single entry as a row of 2
        return self.m if self.m > 1 else 2

    @property
    def sums(self) -> bool:
        """True when the all-pairs max sums its comparisons instead of multiplying them."""
        return self.row_length - 1 >= PAIRWISE_PROD_LIMIT

    @property
    def prod_levels(self) -> int:
        """Sequential multiplications of CrypTen's `prod` tree over row_length - 1 factors."""
        if self.sums:
            return 0
        k, levels = self.row_length - 1, 0
        while k > 1:
            k, levels = k // 2 + k % 2, levels + 1
        return levels


@dataclass(frozen=True)
class MaxSchedule:
    """How CrypTen's max over rows of length T proceeds: `steps` compare-and-select halvings with
    `tree_pairs` pairs per row in total, then all-pairs maxima (`stages`, in sequence)."""

    steps: int
    tree_pairs: int
    stages: tuple[PairwiseStage, ...]


def _double_log_stages(n: int, mult: int) -> list[PairwiseStage]:
    """CrypTen's `_max_helper_double_log_recursive`: blocks of isqrt(n) recursively, then one
    all-pairs max over the block maxima and the remainder."""
    if n == 1:
        return []
    root = int(math.sqrt(n))
    count = n // root
    return [*_double_log_stages(root, mult * count), PairwiseStage(mult, count + n % root)]


def _halvings(T: int, steps: int) -> tuple[int, int]:
    """(pairs compared, entries left) after `steps` compare-and-select halvings of T entries."""
    m, pairs = T, 0
    for _ in range(max(steps, 0)):
        pairs += m // 2
        m = m // 2 + m % 2
    return pairs, m


def max_schedule(T: int, method: str) -> MaxSchedule:
    """The reduction schedule of `crypten_compat.row_max` for rows of length T (CrypTen 0.4.1's
    `maximum.py`, method by method)."""
    if method == "pairwise":
        return MaxSchedule(0, 0, (PairwiseStage(1, T),))
    if method == "log_reduction":
        steps = int(math.log(T)) if T > 1 else 0
        pairs, m = _halvings(T, steps)
        return MaxSchedule(steps, pairs, (PairwiseStage(1, m),))
    if method == "double_log_reduction":
        return MaxSchedule(0, 0, tuple(_double_log_stages(T, 1)))
    if method == "accelerated_cascade":
        if T < 3:
            return MaxSchedule(0, 0, (PairwiseStage(1, T),))
        steps = max(int(math.log(math.log(math.log(T)))) + 1, 0)
        pairs, m = _halvings(T, steps)
        return MaxSchedule(steps, pairs, tuple(_double_log_stages(m, 1)))
    raise UserError(f"unknown max_method {method!r}")


def _matmul_features(n_x: int, n_w: int, n_y: int, macs: int) -> dict[str, dict[str, float]]:
    return {
        "size": {"x": n_x, "w": n_w, "y": n_y, "one": 1},
        "count": {"one": 1},
        "time": {"macs": macs, "operands": n_x + n_w, "y": n_y, "one": 1},
    }


def spu_max_steps(T: int) -> int:
    """Sequential compare-and-select levels of SPU's row max over T entries (SPU 0.9.5,
    `libspu/kernel/hlo/reduce.cc`, `TreeReduce`): each level compares the two halves of the row,
    an odd entry is set aside, and the set-aside entries are compared one by one at the end. A
    row of T entries therefore takes floor(log2 T) halvings plus one step per set-aside entry
    (the 1 bits of T below its leading one), and T - 1 comparisons in all."""
    return max(T.bit_length() - 1, 0) + max(bin(T).count("1") - 1, 0)


SPU_MMUL_LIMIT = 256 * 1024 * 1024  # bytes of both operands' shares above which SPU tiles a product


def spu_share_bytes(protocol: str, field_name: str) -> int:
    """Bytes of one party's share of one ring element under SPU: the ring's (FM64 8, FM128 16),
    twice that under ABY3 (a replicated share holds two ring elements)."""
    ring = {"FM32": 4, "FM64": 8, "FM128": 16}[field_name]
    return 2 * ring if protocol == "ABY3" else ring


def spu_mmul_blocks(m: int, n: int, k: int, share_bytes: int) -> tuple[int, int, int]:
    """(row, column, inner) blocks of SPU's tiled (m, k) @ (k, n) product of secrets (SPU 0.9.5,
    `libspu/kernel/hal/ring.cc`, `calcMmulTilingSize` and `_mmul`): a product whose operands'
    shares exceed `SPU_MMUL_LIMIT` bytes runs block by block; each block opens its own slices of
    both operands, so X is opened once per column block and W once per row block."""
    if min(m, n, k) == 0 or (m * k + k * n) * share_bytes < SPU_MMUL_LIMIT:
        return 1, 1, 1
    limit = SPU_MMUL_LIMIT / share_bytes
    if k > (m + n) * 8:  # tall and skinny: only the large dimension is split
        mn_step = m + n
        k_step = max(1, math.ceil(limit / mn_step))
    elif m + n > k * 8:
        k_step = k
        mn_step = max(1, math.ceil(limit / k_step))
    else:
        ratio = k / (m + n)
        mn = math.sqrt(limit / ratio)
        k_step = max(1, math.ceil(limit / mn))
        mn_step = max(1, math.ceil(mn))
    m_step = max(mn_step * m // (m + n), 1)
    n_step = max(mn_step * n // (m + n), 1)
    return -(-m // m_step), -(-n // n_step), -(-k // k_step)


def _spu_matmul_features(m: int, n: int, k: int, share_bytes: int) -> dict[str, dict[str, float]]:
    """`_matmul_features` of an (m, k) @ (k, n) product under SPU's tiling (`spu_mmul_blocks`):
    the opened elements of X and W (SEMI2K's Beaver products) count once per block that opens
    them; each inner block makes its own (m, n) partial product (ABY3 reshares every one), so
    `partial` counts the partial products past the first; and every block past the first adds
    its own send actions (`blocks`). Both are zero for an untiled product: a calibration without
    a tiled product refuses a tiled one instead of guessing."""
    mb, nb, kb = spu_mmul_blocks(m, n, k, share_bytes)
    own = _matmul_features(nb * m * k, mb * k * n, m * n, m * n * k)
    return {**own, "size": {**own["size"], "partial": (kb - 1) * m * n},
            "count": {"one": 1, "blocks": mb * nb * kb - 1}}


def _spu_features(kind: str, dims: dict[str, int], share_bytes: int) -> dict[str, dict[str, float]] | None:
    """The features of SPU's kernels where they differ from CrypTen's (None elsewhere): SPU tiles
    a large product of two secrets (`_spu_matmul_features`; `share_bytes` per ring element of
    one party's share, `spu_share_bytes`); it runs a product of all heads (and may run a head's kernels) head by head, so send actions may grow
    with the heads H; the softmax's row max is SPU's halving tree (`spu_max_steps`), not one of
    CrypTen's max methods;
    `other` holds rotary positions, whose products with the public tables SPU truncates with
    communication (CrypTen's two-party truncation is local), so their rotated elements count."""
    g = dims.get
    mnk = {"embedding": ("T", "d", "V"), "linear": ("T", "o", "i"), "lm_head": ("T", "V", "d")}.get(kind)
    if mnk is not None:
        return _spu_matmul_features(*(g(a) for a in mnk), share_bytes)
    if kind in ("attention_scores", "attention_mix"):
        own = features(kind, dims, "", "crypten")
        return {**own, "count": {"one": 1, "heads": g("H")}}
    if kind == "softmax":
        T, rows = g("T"), g("H") * g("T")
        return {
            # the tree's rows x (T - 1) comparisons are elements - rows: no feature of their own
            "size": {"elements": rows * T, "rows": rows, "one": 1},
            "count": {"one": 1, "steps": spu_max_steps(T), "heads": g("H")},
            "time": {"elements": rows * T, "rows": rows, "one": 1},
        }
    if kind == "other":
        rotated = 2 * g("H", 0) * g("T", 0) * g("rd", 0)  # q and k
        return {
            "size": {"elements": g("n"), "rotated": rotated, "one": 1},
            "count": {"one": 1, "rotary": int(rotated > 0)},
            "time": {"elements": g("n"), "rotated": rotated, "one": 1},
        }
    return None


def features(kind: str, dims: dict[str, int], max_method: str, engine: str = "crypten",
             share_bytes: int = 8) -> dict[str, dict[str, float]]:
    """Shape features of one call, by group (see the module docstring); `engine` "spu" takes
    SPU's own product, attention, softmax and `other` features (`_spu_features`, with
    `share_bytes` of `spu_share_bytes`). Raises `ValueError` for an unknown kind."""
    g = dims.get
    if engine == "spu":
        own = _spu_features(kind, dims, share_bytes)
        if own is not None:
            return own
    if kind == "embedding":
        return _matmul_features(g("T") * g("V"), g("V") * g("d"), g("T") * g("d"), g("T") * g("V") * g("d"))
    if kind == "linear":
        return _matmul_features(g("T") * g("i"), g("i") * g("o"), g("T") * g("o"), g("T") * g("i") * g("o"))
    if kind == "lm_head":
        return _matmul_features(g("T") * g("d"), g("d") * g("V"), g("T") * g("V"), g("T") * g("d") * g("V"))
    if kind in ("attention_scores", "attention_mix"):
        qkv, scores = g("H") * g("T") * g("hd"), g("H") * g("T") * g("T")
        return {
            "size": {"qkv": qkv, "scores": scores, "one": 1},
            "count": {"one": 1},
            "time": {"macs": scores * g("hd"), "qkv": qkv, "scores": scores, "one": 1},
        }
    if kind == "softmax":
        T, rows = g("T"), g("H") * g("T")
        s = max_schedule(T, max_method)
        pw = [(rows * st.mult, st) for st in s.stages]  # (rows of the stage, stage)
        pairs = sum(r * st.m * (st.row_length - 1) for r, st in pw)
        return {
            "size": {
                "elements": rows * T, "rows": rows, "tree": rows * s.tree_pairs, "pairs": pairs,
                "prod": sum(r * st.m * (st.row_length - 2) for r, st in pw if not st.sums),
                "survivors": sum(r * st.m for r, st in pw),
                "sums": sum(r * st.m for r, st in pw if st.sums),
                "stage_rows": sum(r for r, _ in pw),
                "one": 1,
            },
            "count": {"one": 1, "steps": s.steps, "stages": len(s.stages),
                      "prod_levels": sum(st.prod_levels for st in s.stages),
                      "sums": sum(int(st.sums) for st in s.stages)},
            "time": {"elements": rows * T, "tree": rows * s.tree_pairs, "pairs": pairs, "rows": rows, "one": 1},
        }
    if kind == "layernorm":
        n = g("T") * g("d")
        return {
            "size": {"elements": n, "rows": g("T"), "width": g("d"), "one": 1},
            "count": {"one": 1},
            "time": {"elements": n, "rows": g("T"), "one": 1},
        }
    if kind == "dyt":
        n = g("T") * g("d")
        return {"size": {"elements": n, "width": g("d"), "one": 1}, "count": {"one": 1},
                "time": {"elements": n, "one": 1}}
    if kind.startswith("activation:"):
        n = g("T") * g("n")
        return {"size": {"elements": n, "one": 1}, "count": {"one": 1}, "time": {"elements": n, "one": 1}}
    if kind == "other":
        return {"size": {"elements": g("n"), "one": 1}, "count": {"one": 1}, "time": {"elements": g("n"), "one": 1}}
    raise ValueError(f"unknown primitive kind {kind!r}")


def traffic_names(names: dict[str, list[str]]) -> list[str]:
    """The features of a count field fitted by least squares where the bytes are too (`on_traffic`):
    the size and the count features together, since such counts need not split into the two
    (CHEETAH's send actions grow with the elements: OT messages, silent-OT refills)."""
    return [f"size.{n}" for n in names["size"]] + [f"count.{n}" for n in names["count"]]


def on_traffic(fld: str, fitted: Collection[str]) -> bool:
    """Whether count field `fld` is fitted on `traffic_names`, given the fields a kind fits by
    least squares (`KindFit.residual`): when the bytes are fitted too (CHEETAH). Where only the
    rounds are (ABY3: random party roles per call, not size), they keep the count features."""
    return fld in fitted and "bytes" in fitted and fld not in TIME_FIELDS


def field_vector(fld: str, feats: dict[str, dict[str, float]], names: dict[str, list[str]], traffic: bool) -> list[float]:
    """The feature values that `fld`'s coefficients multiply (`names`: a kind's feature names by
    group): its group's (`FIELD_GROUP`), or `traffic_names` (`on_traffic`)."""
    if not traffic:
        return [feats[FIELD_GROUP[fld]][n] for n in names[FIELD_GROUP[fld]]]
    both = {f"{g}.{n}": v for g in ("size", "count") for n, v in feats[g].items()}
    return [both[n] for n in traffic_names(names)]


__all__ = ["FIELD_GROUP", "GROUPS", "PAIRWISE_PROD_LIMIT", "SPU_MMUL_LIMIT", "TIME_FIELDS", "MaxSchedule", "PairwiseStage", "features", "field_vector", "max_schedule", "on_traffic", "spu_max_steps", "spu_mmul_blocks", "spu_share_bytes", "traffic_names"]
