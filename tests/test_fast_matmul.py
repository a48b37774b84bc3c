"""The float64-limb int64 matmul equals torch's wrapping int64 matmul bit for bit.

References: torch.matmul on int64 (wrapping modulo 2^64) and, for single dot products,
Python's arbitrary-precision integers reduced modulo 2^64.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_lnfree.secure import fast_matmul as fm
from pi_lnfree.secure.fast_matmul import fast_matmul, ring_matmul, split_limbs, uses_limbs

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
# Values at the edges of the ring and of the limbs (a limb of exactly -2^21 is the largest).
EXTREMES = [
    0, 1, -1, I64_MAX, I64_MIN, I64_MIN + 1, I64_MAX - 1,
    2**21, -(2**21), 2**21 - 1, 2**22, -(2**22), 2**43, -(2**43), 2**44, -(2**44),
    2**62, -(2**62), 0x5555555555555555, -0x5555555555555556,
]


def to_signed(v: int) -> int:
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


# Every limb of this value is the extreme -2^21 (top limb -2^19): the worst case for exactness.
WORST = to_signed(-(2**21) - (2**21) * 2**22 - (2**19) * 2**44)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Timing-independent, but the shared 2-core machine runs elementwise ops faster on one thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_tensor(shape, seed: int, mode: str) -> torch.Tensor:
    """int64 tensor: uniformly random, only extreme values, or a mix of both."""
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(I64_MIN, I64_MAX, shape, dtype=torch.int64, generator=gen)
    if mode == "random":
        return rand
    ext = torch.tensor(EXTREMES, dtype=torch.int64)
    picked = ext[torch.randint(0, len(EXTREMES), shape, generator=gen)]
    if mode == "extreme":
        return picked
    mask = torch.rand(shape, generator=gen) < 0.5
    return torch.where(mask, picked, rand)


def assert_bit_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    expected = torch.matmul(a, b)
    got = ring_matmul(a, b)
    assert got.dtype == torch.int64 and got.shape == expected.shape
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- limbs


def test_split_limbs_reconstructs_extremes_and_stays_in_range():
    x = torch.tensor(EXTREMES + [WORST], dtype=torch.int64)
    limbs = split_limbs(x)
    assert len(limbs) == fm.N_LIMBS == 3 and all(limb.dtype == torch.float64 for limb in limbs)
    for i, limb in enumerate(limbs):
        bound = 2**21 if i < 2 else 2**19
        assert limb.min() >= -bound and limb.max() < bound
        assert torch.equal(limb, limb.round())
    for idx, value in enumerate(x.tolist()):
        total = sum(int(limbs[i][idx]) << (22 * i) for i in range(3))
        assert to_signed(total) == value
    assert [float(limb[-1]) for limb in limbs] == [-(2**21), -(2**21), -(2**19)]


@settings(max_examples=200, deadline=None)
@given(st.integers(I64_MIN, I64_MAX))
def test_split_limbs_property(value):
    limbs = split_limbs(torch.tensor([value], dtype=torch.int64))
    assert to_signed(sum(int(limb[0]) << (22 * i) for i, limb in enumerate(limbs))) == value


# ---------------------------------------------------------------- products


@st.composite
def operands(draw):
    """Shapes covering vectors, matrices, batched and broadcast 3-D / 4-D operands."""
    m, k, n = (draw(st.integers(1, 9)) for _ in range(3))
    b1, b2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["vv", "mv", "vm", "mm", "bmm", "b_m", "bcast4", "v_b"]))
    shapes = {
        "vv": ((k,), (k,)),
        "mv": ((m, k), (k,)),
        "vm": ((k,), (k, n)),
        "mm": ((m, k), (k, n)),
        "bmm": ((b1, m, k), (b1, k, n)),
        "b_m": ((b1, m, k), (k, n)),
        "bcast4": ((b2, 1, m, k), (b1, k, n)),
        "v_b": ((k,), (b1, b2, k, n)),
    }[kind]
    seed = draw(st.integers(0, 2**31))
    modes = draw(st.tuples(*[st.sampled_from(["random", "extreme", "mixed"])] * 2))
    return make_tensor(shapes[0], seed, modes[0]), make_tensor(shapes[1], seed + 1, modes[1])


@settings(max_examples=100, deadline=None)
@given(operands())
def test_ring_matmul_equals_int64_matmul(pair):
    assert_bit_identical(*pair)


@settings(max_examples=60, deadline=None)
@given(operands(), st.integers(1, 5), st.integers(1, 5))
def test_blocking_over_inner_and_column_dims(pair, k_block, n_cols):
    """Tiny K and column blocks exercise every block boundary on small tensors."""
    saved = fm.MAX_K_BLOCK, fm.RIGHT_LIMB_BYTES
    fm.MAX_K_BLOCK, fm.RIGHT_LIMB_BYTES = k_block, n_cols * 8 * fm.N_LIMBS * k_block
    try:
        assert_bit_identical(*pair)
    finally:
        fm.MAX_K_BLOCK, fm.RIGHT_LIMB_BYTES = saved


@pytest.mark.parametrize("k", [2047, 2048, 2049, 4097])
def test_worst_case_limbs_at_the_exactness_bound(k):
    """All limbs at -2^21: every block's limb sums reach exactly 2^53 and must stay exact."""
    a = torch.full((3, k), WORST, dtype=torch.int64)
    b = torch.full((k, 2), WORST, dtype=torch.int64)
    b[:, 1] = I64_MIN
    assert fm.MAX_K_BLOCK == 2048
    assert_bit_identical(a, b)
    assert int(ring_matmul(a[0], b[:, 0])) == to_signed(k * WORST * WORST)


def test_extreme_constant_matrices():
    for x in (0, -1, I64_MAX, I64_MIN):
        for y in (0, -1, I64_MAX, I64_MIN):
            a = torch.full((4, 300), x, dtype=torch.int64)
            b = torch.full((300, 5), y, dtype=torch.int64)
            assert_bit_identical(a, b)
            assert int(ring_matmul(a, b)[0, 0]) == to_signed(300 * x * y)


def test_large_inner_dimension_against_python_integers():
    """A dot product over 2^21 + 3 terms (over a thousand K blocks) equals exact integer math."""
    k = 2**21 + 3
    a = make_tensor((k,), 7, "mixed")
    b = make_tensor((k,), 8, "mixed")
    got = int(ring_matmul(a, b))
    assert got == int(torch.matmul(a, b))
    a_list, b_list = a.tolist(), b.tolist()
    assert got == to_signed(sum(x * y for x, y in zip(a_list, b_list, strict=True)))


def test_gpt2_block_shapes_and_noncontiguous_operands():
    a = make_tensor((128, 768), 1, "random")
    w = make_tensor((2304, 768), 2, "random").t()  # a transposed weight view
    assert_bit_identical(a, w)
    q = make_tensor((1, 12, 128, 64), 3, "mixed")
    kt = make_tensor((1, 12, 128, 64), 4, "mixed").transpose(-1, -2)
    assert_bit_identical(q, kt)
    p = make_tensor((12, 128, 128), 5, "random")
    v = make_tensor((12, 128, 64), 6, "random")
    assert_bit_identical(p, v)


def test_empty_dimensions():
    assert_bit_identical(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.int64))
    assert_bit_identical(torch.zeros(0, 5, dtype=torch.int64), torch.ones(5, 4, dtype=torch.int64))


def test_ring_matmul_rejects_what_torch_rejects():
    with pytest.raises(TypeError):
        ring_matmul(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError):
        ring_matmul(torch.ones(2, 3, dtype=torch.int64), torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError):
        ring_matmul(torch.tensor(3), torch.ones(2, dtype=torch.int64))


# ---------------------------------------------------------------- dispatch


def test_dispatch_takes_limbs_only_for_large_plain_cpu_int64_products():
    big_a = torch.ones(128, 64, dtype=torch.int64)
    big_b = torch.ones(64, 64, dtype=torch.int64)
    assert 128 * 64 * 64 >= fm.MIN_WORK and uses_limbs(big_a, big_b)
    assert not uses_limbs(big_a[:2], big_b)  # too small: call overhead dominates
    assert not uses_limbs(big_a.double(), big_b.double())
    assert not uses_limbs(big_a, big_b, kwargs={"out": torch.empty(128, 64, dtype=torch.int64)})
    assert not uses_limbs(big_a, torch.ones(65, 64, dtype=torch.int64))  # torch raises instead

    class Sub(torch.Tensor):
        pass

    assert not uses_limbs(big_a.as_subclass(Sub), big_b)


def test_fast_matmul_matches_torch_on_every_path():
    a = make_tensor((128, 100), 11, "mixed")
    b = make_tensor((100, 30), 12, "mixed")
    assert uses_limbs(a, b)
    assert torch.equal(fast_matmul(a, b), torch.matmul(a, b))
    x, y = torch.randn(5, 4), torch.randn(4, 3)
    assert torch.equal(fast_matmul(x, y), torch.matmul(x, y))
    out = torch.empty(128, 30, dtype=torch.int64)
    fast_matmul(a, b, out=out)
    assert torch.equal(out, torch.matmul(a, b))
    with pytest.raises(RuntimeError):
        fast_matmul(a, torch.ones(3, 3, dtype=torch.int64))


def test_torch_stand_in_only_replaces_matmul():
    fake = fm.torch_with_fast_matmul()
    assert fake.matmul is fast_matmul
    assert fake.Tensor is torch.Tensor and fake.randint is torch.randint and fake.long is torch.long
    assert fake.conv2d is torch.conv2d


def test_speed_measurement_reports_both_timings():
    result = fm.measure_speedup(m=16, k=64, n=64, repeats=1)
    assert result["int64_s"] > 0 and result["limbs_s"] > 0
    assert result["speedup"] == pytest.approx(result["int64_s"] / result["limbs_s"])


# ---------------------------------------------------------------- CrypTen, two real parties


def _seed_party(crypten, rank: int) -> None:
    """Same randomness in every run: prev/next seeds chained between the two parties."""
    cpu = torch.device("cpu")
    gens = crypten.generators
    gens["prev"][cpu].manual_seed(1000 + (rank - 1) % 2)
    gens["next"][cpu].manual_seed(1000 + rank)
    gens["local"][cpu].manual_seed(2000 + rank)
    gens["global"][cpu].manual_seed(3000)


def _digest(t: torch.Tensor) -> str:
    """SHA-256 of dtype, shape and raw bytes: equal digests mean bit-identical tensors."""
    data = t.contiguous().numpy().tobytes()
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + data).hexdigest()


def _secure_products() -> dict:
    """In each party: secret products of the shapes a transformer uses, shares and counters."""
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    torch.set_num_threads(1)
    rank = crypten.communicator.get().get_rank()
    _seed_party(crypten, rank)
    calls = []
    original = fm.ring_matmul

    def counting(a, b):
        calls.append(tuple(a.shape))
        return original(a, b)

    fm.ring_matmul = counting
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(32, 128, generator=gen), torch.randn(128, 96, generator=gen)
    q, k = torch.randn(1, 4, 64, 32, generator=gen), torch.randn(1, 4, 64, 32, generator=gen)
    p, v = torch.rand(4, 64, 64, generator=gen), torch.randn(4, 64, 32, generator=gen)
    crypten_compat.reset_comm_stats()
    xs, ws = crypten.cryptensor(x, src=0), crypten.cryptensor(w, src=1)
    qs, ks = crypten.cryptensor(q, src=0), crypten.cryptensor(k, src=1)
    ps, vs = crypten.cryptensor(p, src=0), crypten.cryptensor(v, src=1)
    outs = [xs.matmul(ws), xs.matmul(w), qs.matmul(ks.transpose(-1, -2)), ps.matmul(vs)]
    shares = [o.share.clone() for o in outs]
    revealed = [o.get_plain_text() for o in outs]
    stats = crypten_compat.comm_stats()
    fm.ring_matmul = original
    expected = [x @ w, x @ w, q @ k.transpose(-1, -2), p @ v]
    return {  # digests: run_multiprocess joins the parties before it drains their queue
        "rounds": stats["rounds"],
        "bytes": stats["bytes"],
        "shares": [_digest(t) for t in shares],
        "revealed": [_digest(t) for t in revealed],
        "close": all(torch.allclose(r, e, atol=0.05, rtol=0.01) for r, e in zip(revealed, expected, strict=True)),
        "limb_calls": len(calls),
        "patched": crypten.mpc.primitives.beaver.torch is fm.torch_with_fast_matmul(),
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_two_parties_identical_bytes_rounds_and_results_with_and_without_limbs(provider):
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    cfg = crypten.cfg
    saved = (cfg.communicator.verbose, cfg.mpc.provider)
    cfg.communicator.verbose, cfg.mpc.provider = True, provider
    runs = {}
    try:
        for limbs in (False, True):
            assert crypten_compat.install_fast_matmul(limbs, force=True) is limbs
            torch.manual_seed(0)  # the TTP dealer seeds the parties from torch's global RNG
            runs[limbs] = crypten.mpc.run_multiprocess(world_size=2)(_secure_products)()
    finally:
        crypten_compat.install_fast_matmul(False)
        cfg.communicator.verbose, cfg.mpc.provider = saved
    assert crypten.mpc.primitives.arithmetic.torch is torch  # stock again
    stock, fast = runs[False], runs[True]
    assert stock is not None and fast is not None, "a party failed"
    for party in range(2):
        s, f = stock[party], fast[party]
        assert not s["patched"] and s["limb_calls"] == 0
        assert f["patched"] and f["limb_calls"] >= 4  # the online correction terms at least
        assert (f["rounds"], f["bytes"]) == (s["rounds"], s["bytes"]) and s["bytes"] > 0
        assert f["shares"] == s["shares"] and f["revealed"] == s["revealed"]
        assert s["close"]


def test_install_fast_matmul_is_reversible_and_respects_auto(monkeypatch):
    from pi_lnfree.errors import UserError
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    beaver = crypten.mpc.primitives.beaver
    tfp = crypten.mpc.provider.tfp_provider
    try:
        assert crypten_compat.install_fast_matmul(True, force=True) is True
        assert beaver.torch is fm.torch_with_fast_matmul() and tfp.torch is beaver.torch
        assert crypten_compat.install_fast_matmul(False) is False
        assert beaver.torch is torch and tfp.torch is torch
        monkeypatch.setattr(fm, "limbs_pay_off", lambda: False)
        assert crypten_compat.install_fast_matmul(True) is False and beaver.torch is torch
        monkeypatch.setattr(fm, "limbs_pay_off", lambda: True)
        assert crypten_compat.install_fast_matmul(True) is True and beaver.torch is not torch
        monkeypatch.setenv(crypten_compat.FAST_MATMUL_ENV, "stock")
        assert crypten_compat.install_fast_matmul(True) is False and beaver.torch is torch
        monkeypatch.setattr(fm, "limbs_pay_off", lambda: False)
        monkeypatch.setenv(crypten_compat.FAST_MATMUL_ENV, "limbs")
        assert crypten_compat.install_fast_matmul(True) is True and beaver.torch is not torch
        assert crypten_compat.install_fast_matmul(False) is False and beaver.torch is torch
        monkeypatch.setenv(crypten_compat.FAST_MATMUL_ENV, "sometimes")
        with pytest.raises(UserError, match="PI_LNFREE_FAST_MATMUL"):
            crypten_compat.install_fast_matmul(True)
    finally:
        crypten_compat.install_fast_matmul(False)
