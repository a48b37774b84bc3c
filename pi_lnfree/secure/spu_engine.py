"""`secure-eval` under SecretFlow SPU (profiles with `engine = "spu"`): the main process starts
one SPU party per rank with the SPU environment's interpreter and reads their results back.

SPU 0.9.5 pins numpy < 2 and jax <= 0.4.34, so it lives in its own environment (`make spu`:
`.venv-spu`); this module only starts processes and reads JSON and `.npy` files, so the main
environment needs nothing from SPU. The parties (`pi_lnfree.secure.spu_party`) import this
checkout's `pi_lnfree` through a private folder holding only a link to the package, so none of
the main environment's packages reach them.

Roles as in the CrypTen engine (`pi_lnfree.secure.evaluate`): the client (rank 0) gets the token
ids in its job, the server (rank 1) the checkpoint path, the ABY3 helper (rank 2) nothing; only
the client gets the logits. The caller, which is no party, computes the plaintext reference.

The result has the shape of CrypTen's (`result.assemble_result`): per-category bytes (sent by
all parties together), rounds (send actions of the busiest party), local seconds (without SPU's
one-off compilation of each program), totals, network estimates and fidelity; plus `spu`: the
bytes of sharing the inputs (weights once per session, tokens once per sequence: CrypTen shares
its inputs from pseudo-random seeds at no cost, SPU sends the shares), the one-off session setup (CHEETAH's HE keys and base
OTs, spent before the first metered operator), compile seconds and the interpreter.

Across hosts (`--rank`), each host's main process runs its one party after the rendezvous of
`pi_lnfree.secure.spu_rendezvous` at the client's `--master-addr/--master-port`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pi_lnfree
from pi_lnfree.errors import UserError
from pi_lnfree.secure.meter import combine_senders
from pi_lnfree.secure.parties import free_port, supervise
from pi_lnfree.secure.profile import ProtocolProfile
from pi_lnfree.secure.roles import CLIENT, SERVER, SPU_ROLES, party_label

ENV_VAR = "PI_LNFREE_SPU_PYTHON"
INSTALL_HINT = ("the SPU engine runs in its own environment, which is missing: run `make spu` in the "
                f"pi-lnfree checkout (or set {ENV_VAR} to a Python 3.10/3.11 with spu==0.9.5 and torch)")


class SpuMissing(UserError):
    """No SPU environment to run the parties in."""


def spu_python() -> Path:
    """The SPU environment's interpreter: $PI_LNFREE_SPU_PYTHON, else `.venv-spu/bin/python` of
    this checkout, else of the working directory. Raises `SpuMissing` (one line: how to install)."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise SpuMissing(f"{ENV_VAR}={path}: no such interpreter; {INSTALL_HINT}")
        return path
    for root in _candidate_roots():
        candidate = root / ".venv-spu" / "bin" / "python"
        if candidate.is_file():
            return candidate
    raise SpuMissing(INSTALL_HINT)


def _candidate_roots() -> list[Path]:
    """Folders that may hold `.venv-spu`: this checkout, then the working directory."""
    return [Path(pi_lnfree.__file__).resolve().parents[1], Path.cwd()]


def spu_party_label(rank: int) -> str:
    """'SPU client (rank 0)', 'SPU server (rank 1)', 'SPU helper (rank 2)'."""
    return f"SPU {party_label(rank, SPU_ROLES)}"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _package_path(tmp: Path) -> Path:
    """A folder holding only a link to this `pi_lnfree` package (the parties' PYTHONPATH)."""
    folder = tmp / "pkg"
    folder.mkdir()
    (folder / "pi_lnfree").symlink_to(Path(pi_lnfree.__file__).resolve().parent, target_is_directory=True)
    return folder


def launch_parties(jobs: dict[int, dict[str, Any]], timeout_s: float, tmp: Path, on_start=None,
                   module: str = "pi_lnfree.secure.spu_party") -> dict[int, Any]:
    """Run one SPU party process per job (rank -> job dict), each `python -m module JOB OUT`
    (the secure forward, or `pi_lnfree.secure.spu_measure`); rank -> (its result value, its output
    folder). Raises `PartyFailure` naming every party that failed; once one failed, the others
    get `timeout_s` seconds to stop on their own, then are killed."""
    python = spu_python()
    env = {**os.environ, "PYTHONPATH": str(_package_path(tmp)), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONHOME", None)

    def start(rank: int):
        out = tmp / f"party{rank}"
        out.mkdir()
        (out / "job.json").write_text(json.dumps(jobs[rank]))
        argv = [str(python), "-m", module, str(out / "job.json"), str(out)]
        return argv, out / "result.json", {"stdout": subprocess.DEVNULL, "stderr": None, "env": env, "cwd": str(out)}

    outs = supervise(start, list(jobs), timeout_s, on_start, read=_read_json, label=spu_party_label)
    return {rank: (_read_json(path)["value"], path.parent) for rank, path in outs.items()}


def client_summary(client: dict[str, Any], tokens: torch.Tensor, source: str, out: Path) -> dict[str, Any]:
    """The client's result in the form `result.assemble_result` reads, per-pass costs combined
    over all parties (`meter.combine_senders`)."""
    parties = {int(r): v for r, v in client["parties"].items()}
    n = len(parties[CLIENT]["states"])
    passes = [combine_senders([parties[r]["states"][i] for r in sorted(parties)]) for i in range(n)]
    return {
        "passes": passes,
        "tokens": tokens,
        "tokens_source": source,
        "logits": torch.from_numpy(np.load(out / "logits.npy")),
        "weight_sharing_seconds": max(p["weight_sharing_seconds"] for p in parties.values()),
        "spu": {
            "weight_sharing_bytes": parties[SERVER]["input_bytes"],
            "token_sharing_bytes_per_sequence": parties[CLIENT]["input_bytes"] / n,
            "session_setup_bytes": sum(p["setup_bytes"] for p in parties.values()),
            "compile_seconds": max(p["compile_seconds"] for p in parties.values()),
        },
    }


def party_job(rank: int, addresses: list[str], profile: ProtocolProfile, timeout_s: float) -> dict[str, Any]:
    """The public part of a party's job; the caller adds its private input (client: "tokens",
    server: "checkpoint")."""
    return {"rank": rank, "addresses": addresses, "profile": str(Path(profile.path).resolve()), "timeout_s": timeout_s}


def local_jobs(profile: ProtocolProfile, timeout_s: float) -> dict[int, dict[str, Any]]:
    """`party_job` of every rank for parties on this host, each listening on a free port."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(profile.world_size)]
    return {r: party_job(r, addresses, profile, timeout_s) for r in range(profile.world_size)}


def secure_eval_local(checkpoint, profile: ProtocolProfile, spec: dict[str, Any], timeout_s: float, networks,
                      capture: bool = False, on_start=None) -> dict[str, Any]:
    """All SPU parties as local processes on 127.0.0.1; the full result (as `evaluate.secure_eval`)."""
    from pi_lnfree.checkpoint import load_model, resolve_checkpoint
    from pi_lnfree.secure.result import assemble_result
    from pi_lnfree.secure.structure import check_supported
    from pi_lnfree.secure.tokens import make_tokens

    t0 = time.perf_counter()
    spu_python()  # fail before loading anything when the environment is missing
    checkpoint = resolve_checkpoint(checkpoint)
    plain_model, _ = load_model(checkpoint, "cpu")
    cfg = plain_model.config
    tokens, source = make_tokens(spec, cfg)
    check_supported(cfg, profile, tokens.size(1))
    world = profile.world_size
    jobs = local_jobs(profile, timeout_s)
    jobs[CLIENT]["tokens"] = tokens.tolist()
    jobs[SERVER]["checkpoint"] = str(Path(checkpoint).resolve())
    jobs[SERVER]["capture_view"] = capture
    tmp = Path(tempfile.mkdtemp(prefix="pi-lnfree-spu-"))
    try:
        results = launch_parties(jobs, timeout_s, tmp, on_start)
        client_value, client_dir = results[CLIENT]
        client = client_summary(client_value, tokens, source, client_dir)
        result = assemble_result(str(checkpoint), cfg, profile, client, plain_model, networks,
                                 "local SPU processes (brpc on 127.0.0.1)", time.perf_counter() - t0)
        result["parties"] = {"mode": result["parties"]["mode"], "world_size": world, "dealer": False, "engine": "spu"}
        result["spu"] = {**client["spu"], "python": str(spu_python())}
        if capture:
            result["server_view"] = {"token_share": np.load(results[SERVER][1] / "token_share.npy"),
                                     "job": jobs[SERVER]}
            result["client_tokens"] = tokens
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def secure_eval_distributed(checkpoint, profile: ProtocolProfile, spec: dict[str, Any], timeout_s: float,
                            rank: int, master_addr: str, master_port: int | None, networks) -> dict[str, Any]:
    """This process is SPU party `rank` of a multi-host run: it agrees on the link addresses at the
    client's `master_addr:master_port` (`spu_rendezvous`), then runs its one party. The client
    (rank 0) returns the full result (fidelity when it can read `checkpoint`, '-' skips it); the
    others a short status."""
    from pi_lnfree.config import ModelConfig
    from pi_lnfree.secure import spu_rendezvous
    from pi_lnfree.secure.result import assemble_result
    from pi_lnfree.secure.structure import check_supported
    from pi_lnfree.secure.tokens import make_tokens

    t0 = time.perf_counter()
    world = profile.world_size
    if rank not in range(world):
        raise UserError(f"--rank must be one of {tuple(range(world))} with {profile.name}, got {rank}")
    if master_port is None:
        raise UserError("--master-port is required with --rank")
    job: dict[str, Any] = {}
    if rank == CLIENT:
        made: dict[str, Any] = {}

        def decide(config: dict | None) -> None:
            cfg = ModelConfig.from_dict(config)
            made["cfg"] = cfg
            made["tokens"], made["source"] = make_tokens(spec, cfg)
            check_supported(cfg, profile, made["tokens"].size(1))

        addresses, _ = spu_rendezvous.host_client(master_addr, int(master_port), world, timeout_s, decide)
        job["tokens"] = made["tokens"].tolist()
    else:
        config = None
        if rank == SERVER:
            from pi_lnfree.checkpoint import load_model, resolve_checkpoint

            checkpoint = resolve_checkpoint(checkpoint)
            model, _ = load_model(checkpoint, "cpu")
            check_supported(model.config, profile)
            config = model.config.to_dict()
            job["checkpoint"] = str(Path(checkpoint).resolve())
            del model
        addresses = spu_rendezvous.join(rank, master_addr, int(master_port), timeout_s, config)
    job.update(party_job(rank, addresses, profile, timeout_s))
    tmp = Path(tempfile.mkdtemp(prefix="pi-lnfree-spu-"))
    try:
        value, out = launch_parties({rank: job}, timeout_s, tmp)[rank]
        if rank != CLIENT:
            return {"rank": rank, "role": value["role"], "status": "done", "protocol": profile.to_dict(),
                    "wall_seconds": time.perf_counter() - t0}
        client = client_summary(value, made["tokens"], made["source"], out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plain_model = None
    if str(checkpoint) != "-" and Path(checkpoint).is_file():
        from pi_lnfree.checkpoint import load_model

        plain_model, _ = load_model(checkpoint, "cpu")
    result = assemble_result(str(checkpoint), made["cfg"], profile, client, plain_model, networks,
                             f"distributed SPU (rank 0 of {world}, rendezvous {master_addr}:{master_port})",
                             time.perf_counter() - t0)
    result["parties"] = {"mode": result["parties"]["mode"], "world_size": world, "dealer": False, "engine": "spu"}
    result["spu"] = {**client["spu"], "python": str(spu_python())}
    return result


def measure_local(profile: ProtocolProfile, items: list[dict[str, Any]], timeout_s: float) -> tuple[list[list[dict]], str]:
    """Run measuring `items` (`pi_lnfree.secure.spu_measure`) in one launch of local SPU parties:
    per item, the combined meter state (`meter.combine_senders`) of each repeat, and the SPU
    version the parties ran. Raises `SpuMissing` without the SPU environment, `PartyFailure` when
    a party fails."""
    spu_python()
    jobs = {r: {**job, "items": items} for r, job in local_jobs(profile, timeout_s).items()}
    tmp = Path(tempfile.mkdtemp(prefix="pi-lnfree-spu-"))
    try:
        value, _ = launch_parties(jobs, timeout_s, tmp, module="pi_lnfree.secure.spu_measure")[CLIENT]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    parties = {int(r): states for r, states in value["parties"].items()}
    combined = [[combine_senders([parties[r][i][j] for r in sorted(parties)]) for j in range(len(runs))]
                for i, runs in enumerate(parties[CLIENT])]
    return combined, value["spu"]


def secure_eval(checkpoint, profile: ProtocolProfile, spec: dict[str, Any], timeout_s: float, rank: int | None,
                device: str, networks, capture: bool = False, on_start=None, master_addr: str = "127.0.0.1",
                master_port: int | None = None) -> dict[str, Any]:
    """`evaluate.secure_eval` for an `engine = "spu"` profile: all parties on this host
    (`rank=None`), or this process as party `rank` of a multi-host run."""
    spu_python()
    if device != "cpu":
        raise UserError("--device: the SPU engine runs on the CPU only")
    if rank is None:
        return secure_eval_local(checkpoint, profile, spec, timeout_s, networks, capture, on_start)
    return secure_eval_distributed(checkpoint, profile, spec, timeout_s, rank, master_addr, master_port, networks)


__all__ = ["ENV_VAR", "INSTALL_HINT", "SpuMissing", "client_summary", "launch_parties", "local_jobs", "measure_local", "party_job",
           "secure_eval",
           "secure_eval_distributed", "secure_eval_local", "spu_python"]
