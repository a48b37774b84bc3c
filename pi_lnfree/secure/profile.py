"""Protocol profiles (`protocols/*.toml`) and network profiles (`protocols/networks.toml`).

Both ship inside the package (`pi_lnfree/protocols/`) and are named by path or by shipped name.

A protocol profile says how to run securely: engine, triple provider, fixed-point precision and
the approximation knobs of every nonlinearity. A network profile says how fast the link between
the parties is; the meter turns measured costs into LAN/WAN latency with it.

Profile file layout (every key optional except `protocol.name`; unknown keys are an error)::

    [protocol]
    name = "crypten-2pc-ttp"
    description = "..."
    engine = "crypten"          # "crypten" or "spu" (SecretFlow SPU, run in its own environment)
    provider = "TTP"            # crypten: TTP (dealer process) or TFP (benchmark only);
                                # spu: TFP for SEMI2K (SPU's TrustedFirstParty), "none" otherwise
    precision_bits = 16         # fixed-point fractional bits on int64 shares
    fast_matmul = true          # exact float64-limb int64 matmul on CPU (`fast_matmul`)

    [approximations]
    gelu = "tanh"               # erf-GELU computed via: "erf" | "tanh" | "sigmoid"
    gelu_erf_clip = 2.5         # "erf": |x| beyond this uses relu(x) (Taylor erf diverges)
    layernorm_inv_sqrt = "ranged"  # "ranged" (variance in [2^-16, 2^16]) or "crypten" ([0.1, 100])
    layernorm_wide_range = false  # "crypten" only: one extra comparison widens the domain 256x
    max_method = "log_reduction"  # CrypTen softmax max: log_reduction | pairwise | ...
    exp_iterations = 8
    reciprocal_nr_iters = 10
    sqrt_nr_iters = 3
    erf_iterations = 8
    sigmoid_tanh_method = "reciprocal"  # or "chebyshev"

    [spu]                       # engine = "spu" only; [approximations] then takes only `gelu`
    protocol = "SEMI2K"         # SEMI2K, CHEETAH (2PC) or ABY3 (3PC)
    field = "FM64"              # ring Z_2^64 ("FM64") or Z_2^128 ("FM128")
    exp_mode = "taylor"         # exp: "taylor" ((1 + x/2^n)^(2^n)) or "pade" (clamped to |x| < 22)
    exp_iters = 8               # n of the taylor form
    sigmoid_mode = "real"       # gelu = "sigmoid": "real" (1/(1+exp(-x))), "mm1", "seg3"
    div_iters = 2               # Goldschmidt iterations of division and reciprocal
    lower_accuracy_rsqrt = false
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_lnfree.errors import UserError
from pi_lnfree.resources import networks_file, protocol_file

ENGINES = ("crypten", "spu")
PROVIDERS = ("TTP", "TFP")
SPU_PROTOCOLS = {"SEMI2K": 2, "CHEETAH": 2, "ABY3": 3}  # protocol -> number of parties
SPU_FIELDS = ("FM64", "FM128")
SPU_EXP_MODES = ("taylor", "pade")
SPU_SIGMOID_MODES = ("real", "mm1", "seg3")
SPU_DEFAULTS = {
    "spu_protocol": "SEMI2K", "spu_field": "FM64", "spu_exp_mode": "taylor", "spu_exp_iters": 8,
    "spu_sigmoid_mode": "real", "spu_div_iters": 2, "spu_lower_accuracy_rsqrt": False,
}
GELU_METHODS = ("erf", "tanh", "sigmoid")
INV_SQRT_METHODS = ("ranged", "crypten")
MAX_METHODS = ("log_reduction", "double_log_reduction", "accelerated_cascade", "pairwise")
SIGMOID_TANH_METHODS = ("reciprocal", "chebyshev")
# approximations keys passed verbatim to crypten.cfg.functions
_CRYPTEN_FUNCTION_KEYS = (
    "max_method",
    "exp_iterations",
    "reciprocal_nr_iters",
    "sqrt_nr_iters",
    "erf_iterations",
    "sigmoid_tanh_method",
)


@dataclass(frozen=True)
class ProtocolProfile:
    """One secure-inference setting. See the module docstring for the file layout."""

    name: str
    description: str = ""
    engine: str = "crypten"
    provider: str = "TTP"
    precision_bits: int = 16
    fast_matmul: bool = True
    gelu: str = "tanh"
    gelu_erf_clip: float = 2.5
    layernorm_inv_sqrt: str = "ranged"
    layernorm_wide_range: bool = False
    max_method: str = "log_reduction"
    exp_iterations: int = 8
    reciprocal_nr_iters: int = 10
    sqrt_nr_iters: int = 3
    erf_iterations: int = 8
    sigmoid_tanh_method: str = "reciprocal"
    # engine "spu" only (None under crypten, so CrypTen calibrations do not depend on them);
    # `profile_from_dict` fills the defaults `SPU_DEFAULTS`
    spu_protocol: str | None = None
    spu_field: str | None = None
    spu_exp_mode: str | None = None
    spu_exp_iters: int | None = None
    spu_sigmoid_mode: str | None = None
    spu_div_iters: int | None = None
    spu_lower_accuracy_rsqrt: bool | None = None
    path: str | None = None

    @property
    def benchmark_only(self) -> bool:
        """TFP: party 0 generates every triple (CrypTen) or knows every party's triple seeds
        (SPU's TrustedFirstParty), so it could learn every secret."""
        return self.provider == "TFP"

    @property
    def world_size(self) -> int:
        """Parties that compute (a TTP dealer is not counted): 2, or 3 under SPU's ABY3."""
        return SPU_PROTOCOLS[self.spu_protocol] if self.engine == "spu" else 2

    @property
    def security(self) -> str:
        """One line on what the provider guarantees."""
        if self.benchmark_only:
            return "benchmark only: TFP lets party 0 (the client) generate all triples and learn every secret"
        if self.engine == "spu" and self.spu_protocol == "CHEETAH":
            return "semi-honest two-party computation without a dealer (SPU CHEETAH: lattice HE and silent OT)"
        if self.engine == "spu":
            return ("semi-honest three-party replicated secret sharing, honest majority (SPU ABY3: "
                    "a helper party with no input; any two parties together could learn every secret)")
        return "semi-honest two-party secret sharing with a non-colluding trusted dealer (TTP)"

    def require_crypten(self, what: str) -> None:
        """Raise `UserError` unless this is a CrypTen profile: `what` (the cost model, the range
        audit) models CrypTen's protocols and approximations only."""
        if self.engine != "crypten":
            raise UserError(f"{what} covers the crypten engine only; profile {self.path or self.name} uses engine "
                            f"{self.engine!r}: measure it with pi-lnfree secure-eval")

    def crypten_functions(self) -> dict[str, Any]:
        """The knobs that go to `crypten.cfg.functions` verbatim."""
        return {k: getattr(self, k) for k in _CRYPTEN_FUNCTION_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the `protocol` entry of a secure-eval result)."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if not any(k in keys for engine, keys in _ENGINE_ONLY.items() if engine != self.engine)}
        d["benchmark_only"] = self.benchmark_only
        d["security"] = self.security
        return d

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(f"protocol profile {self.path or self.name}: {msg}")

        check(self.engine in ENGINES, f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "spu":
            self._validate_spu(check)
        else:
            check(self.provider in PROVIDERS, f"provider must be one of {PROVIDERS}, got {self.provider!r}")
        check(8 <= self.precision_bits <= 24, f"precision_bits must be in [8, 24], got {self.precision_bits}")
        check(self.gelu in GELU_METHODS, f"gelu must be one of {GELU_METHODS}, got {self.gelu!r}")
        check(self.gelu_erf_clip > 0, "gelu_erf_clip must be positive")
        check(
            self.layernorm_inv_sqrt in INV_SQRT_METHODS,
            f"layernorm_inv_sqrt must be one of {INV_SQRT_METHODS}, got {self.layernorm_inv_sqrt!r}",
        )
        check(self.max_method in MAX_METHODS, f"max_method must be one of {MAX_METHODS}, got {self.max_method!r}")
        check(
            self.sigmoid_tanh_method in SIGMOID_TANH_METHODS,
            f"sigmoid_tanh_method must be one of {SIGMOID_TANH_METHODS}, got {self.sigmoid_tanh_method!r}",
        )
        for key in ("exp_iterations", "reciprocal_nr_iters", "sqrt_nr_iters", "erf_iterations"):
            value = getattr(self, key)
            check(isinstance(value, int) and 1 <= value <= 64, f"{key} must be an integer in [1, 64], got {value!r}")

    def _validate_spu(self, check) -> None:
        check(self.spu_protocol in SPU_PROTOCOLS,
              f"[spu] protocol must be one of {tuple(SPU_PROTOCOLS)}, got {self.spu_protocol!r}")
        # SEMI2K's only dealer in the spu wheel is TrustedFirstParty (its TTP needs SPU's separate
        # beaver server); CHEETAH makes its correlations by HE/OT, ABY3 by three-party sharing.
        wanted = "TFP" if self.spu_protocol == "SEMI2K" else "none"
        check(self.provider == wanted, f"provider must be {wanted!r} with [spu] protocol = "
                                       f"{self.spu_protocol!r}, got {self.provider!r}")
        check(self.spu_field in SPU_FIELDS, f"[spu] field must be one of {SPU_FIELDS}, got {self.spu_field!r}")
        bits = 64 if self.spu_field == "FM64" else 128
        check(self.precision_bits <= bits // 3,
              f"precision_bits {self.precision_bits} leaves too few integer bits in {self.spu_field}")
        check(self.spu_exp_mode in SPU_EXP_MODES,
              f"[spu] exp_mode must be one of {SPU_EXP_MODES}, got {self.spu_exp_mode!r}")
        check(self.spu_sigmoid_mode in SPU_SIGMOID_MODES,
              f"[spu] sigmoid_mode must be one of {SPU_SIGMOID_MODES}, got {self.spu_sigmoid_mode!r}")
        for key in ("spu_exp_iters", "spu_div_iters"):
            value = getattr(self, key)
            check(isinstance(value, int) and 1 <= value <= 32,
                  f"[spu] {key[4:]} must be an integer in [1, 32], got {value!r}")


_SECTIONS = {
    "protocol": ("name", "description", "engine", "provider", "precision_bits", "fast_matmul"),
    "approximations": (
        "gelu", "gelu_erf_clip", "layernorm_inv_sqrt", "layernorm_wide_range", *_CRYPTEN_FUNCTION_KEYS,
    ),
    "spu": ("protocol", "field", "exp_mode", "exp_iters", "sigmoid_mode", "div_iters", "lower_accuracy_rsqrt"),
}
# keys that only one engine reads: a profile of the other engine that sets them is refused
_ENGINE_ONLY = {
    "crypten": {"fast_matmul", "gelu_erf_clip", "layernorm_inv_sqrt", "layernorm_wide_range", *_CRYPTEN_FUNCTION_KEYS},
    "spu": {f"spu_{k}" for k in _SECTIONS["spu"]},
}


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def profile_from_dict(data: dict[str, Any], path: str | None = None) -> ProtocolProfile:
    """Build and validate a profile from the parsed TOML sections."""
    where = path or "protocol profile"
    unknown_sections = sorted(set(data) - set(_SECTIONS))
    if unknown_sections:
        raise UserError(f"{where}: unknown sections {unknown_sections}; known: {sorted(_SECTIONS)}")
    flat: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        body = data.get(section, {})
        unknown = sorted(set(body) - set(keys))
        if unknown:
            raise UserError(f"{where}: unknown keys in [{section}]: {unknown}")
        flat.update({f"spu_{k}" if section == "spu" else k: v for k, v in body.items()})
    if "name" not in flat:
        raise UserError(f"{where}: [protocol] needs a name")
    engine = flat.get("engine", "crypten")
    for other, keys in _ENGINE_ONLY.items():
        foreign = sorted(keys & set(flat)) if other != engine else []
        if foreign:
            names = [k[4:] if k.startswith("spu_") else k for k in foreign]
            raise UserError(f"{where}: {names} apply to engine {other!r} only, not {engine!r}")
    if engine == "spu":
        flat = {**SPU_DEFAULTS, **flat}
    try:
        profile = ProtocolProfile(**flat, path=path)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None
    profile.validate()
    return profile


def load_profile(path: str | Path) -> ProtocolProfile:
    """Read a protocol profile: a TOML file, or the name of a shipped one such as
    `crypten-2pc-ttp` (`pi_lnfree.resources`). Raises `UserError` on any problem."""
    path = protocol_file(path)
    return profile_from_dict(_read_toml(path), str(path))


@dataclass(frozen=True)
class Network:
    """A link between the two parties: bandwidth in bits per second and round-trip time."""

    name: str
    bandwidth_bits_per_s: float
    rtt_ms: float
    description: str = ""

    def seconds(self, compute_s: float, rounds: float, nbytes: float) -> float:
        """Estimated latency = local compute + rounds x RTT + bytes / bandwidth."""
        return compute_s + rounds * self.rtt_ms / 1000.0 + nbytes * 8.0 / self.bandwidth_bits_per_s


def load_networks(path: str | Path | None = None) -> dict[str, Network]:
    """Network profiles by name (default: the shipped `protocols/networks.toml`). Each table has
    `bandwidth_bits_per_s`, `rtt_ms` and an optional `description`."""
    path = networks_file(path)
    data = _read_toml(path)
    out: dict[str, Network] = {}
    for name, body in data.items():
        if not isinstance(body, dict):
            raise UserError(f"{path}: [{name}] must be a table")
        unknown = sorted(set(body) - {"bandwidth_bits_per_s", "rtt_ms", "description"})
        if unknown:
            raise UserError(f"{path}: unknown keys in [{name}]: {unknown}")
        try:
            bw, rtt = float(body["bandwidth_bits_per_s"]), float(body["rtt_ms"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: [{name}] needs numeric bandwidth_bits_per_s and rtt_ms") from None
        if bw <= 0 or rtt < 0:
            raise UserError(f"{path}: [{name}] needs bandwidth > 0 and rtt >= 0")
        out[name] = Network(name, bw, rtt, str(body.get("description", "")))
    if not out:
        raise UserError(f"{path}: no network profiles")
    return out


__all__ = [
    "ENGINES",
    "GELU_METHODS",
    "Network",
    "PROVIDERS",
    "ProtocolProfile",
    "SPU_PROTOCOLS",
    "load_networks",
    "load_profile",
    "profile_from_dict",
]
