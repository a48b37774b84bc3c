"""One `secure-eval` run end to end: what each party does, the parties' launch, the fidelity check
against the plaintext model, and the result (the JSON interface of `pi-lnfree secure-eval`).

Party programs (`party_program`, run inside each party's process):

* server (rank 1): opens the checkpoint, sends the public model config to the client, secret-shares
  every weight once (src=1), then runs the secure forward for each sequence with placeholder
  inputs of the public shape; at the end it sends its meter readings (plain numbers) to the client.
* client (rank 0): receives the config, decides its tokens, sends the public (samples, seq_len),
  shares the one-hot rows of each sequence (src=0), runs the forward and alone receives the
  logits; it combines both parties' meter readings.
* dealer (rank 2, TTP only): serves triples to party 0 until told to stop.

Each sequence runs in two phases (`pi_lnfree.secure.phases`): both parties derive the forward's
request list from the public shapes once, then per sequence an offline phase makes all its
correlated randomness (under TTP: one round trip from party 0 to the dealer) before the client's
tokens are shared, and the metered online forward consumes it without contacting the dealer.

Metadata goes between the parties as JSON (`crypten_compat.exchange_json`), never pickled, and
outside the metered traffic. The plaintext reference logits are computed by the caller, where
the checkpoint is readable (locally: the parent process, which is not a party).

Expected logit error from fixed point alone (16 fractional bits): every encoded value is off by at
most 2^-17 ~ 7.6e-6 and every multiplication's truncation by about 2^-16 ~ 1.5e-5, so a linear
layer with fan-in k and operands of magnitude <= m adds at most ~ k * 2m * 2^-17 (1e-3 for
k = 768, m = 0.5); over a few layers that stays around 1e-3..1e-2. Larger errors come from the
nonlinear approximations (exp, reciprocal, inv_sqrt, tanh/erf), which the result reports measured.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import UserError
from pi_lnfree.secure import crypten_compat, phases
from pi_lnfree.secure.backends.crypten_ops import CryptenOps
from pi_lnfree.secure.meter import Meter, combine_parties
from pi_lnfree.secure.parties import PartyFailure, PartyJob, launch_local, local_jobs, party_ranks
from pi_lnfree.secure.profile import load_networks, load_profile
from pi_lnfree.secure.result import assemble_result
from pi_lnfree.secure.roles import CLIENT, SERVER
from pi_lnfree.secure.structure import Decoder, check_supported, load_weights
from pi_lnfree.secure.tokens import make_tokens

PROGRAM = f"{__name__}:party_program"  # what ranks 0 and 1 run once connected


# ---------------------------------------------------------------------------------------------
# tokens


# ---------------------------------------------------------------------------------------------
# inside the party processes


def party_program(job: PartyJob) -> dict[str, Any]:
    """What the client or the server does once the process group is up (module docstring)."""
    if job.rank == SERVER:
        return _server_program(job)
    return _client_program(job)


def _forward_passes(cfg, weights, job: PartyJob, n, seq_len, tokens, capture=False):
    """Run `n` secure forwards, each an offline phase then the metered online forward; (meter
    states, each with its `offline` phase cost, client logits or None, server view, seconds spent
    deriving the request list)."""
    profile, device = job.profile, job.device
    t0 = time.perf_counter()
    trace = phases.model_trace(cfg, profile, seq_len, job.rank)
    trace_s = time.perf_counter() - t0
    phases.install(device)
    phases.check_same_trace(trace)
    states, logits, view = [], [], None
    for i in range(n):
        meter = Meter(crypten_compat.meter_stats)
        ops = CryptenOps(meter, profile, device)
        model = Decoder(cfg, weights, ops)

        def online(i=i, ops=ops, model=model, meter=meter):
            nonlocal view
            onehot = ops.tokens(None if tokens is None else tokens[i], seq_len, cfg.vocab_size)
            if capture and i == 0:
                view = {"onehot_share": onehot.share.detach().cpu().clone()}
            with meter.span():
                return model.forward(onehot)

        out, offline = phases.offline_then_online(trace, online)
        state = meter.state()
        if profile.provider == "TTP" and job.rank == CLIENT:
            phases.attribute_dealer(state, trace)
        states.append({**state, "offline": offline.to_dict()})
        if out is not None:
            logits.append(out[0].float().cpu())
    return states, (torch.stack(logits) if logits else None), view, trace_s


def _server_program(job: PartyJob) -> dict[str, Any]:
    from pi_lnfree.checkpoint import load_model

    model, _ = load_model(job.checkpoint, "cpu")
    cfg = model.config
    check_supported(cfg, job.profile)
    crypten_compat.exchange_json(cfg.to_dict(), src=SERVER)
    meta = crypten_compat.exchange_json(None, src=CLIENT)
    if "error" in meta:
        raise PartyFailure(f"the client stopped: {meta['error']}")
    weights = load_weights(cfg, model.state_dict(), CryptenOps(None, job.profile, job.device))
    del model
    states, _, view, _ = _forward_passes(cfg, weights, job, meta["samples"], meta["seq_len"], None,
                                         job.capture_server_view)
    crypten_compat.exchange_json(states, src=SERVER)
    return {"role": "server", "view": view}


def _client_program(job: PartyJob) -> dict[str, Any]:
    cfg = ModelConfig.from_dict(crypten_compat.exchange_json(None, src=SERVER))
    try:
        if job.tokens is not None:
            tokens, source = job.tokens, job.token_spec.get("source", "given tokens")
        else:
            tokens, source = make_tokens(job.token_spec, cfg)
        check_supported(cfg, job.profile, tokens.size(1))
    except UserError as e:
        crypten_compat.exchange_json({"error": str(e)}, src=CLIENT)
        raise
    n, T = tokens.shape
    crypten_compat.exchange_json({"samples": int(n), "seq_len": int(T)}, src=CLIENT)
    t0 = time.perf_counter()
    weights = load_weights(cfg, None, CryptenOps(None, job.profile, job.device))
    setup_s = time.perf_counter() - t0
    states, logits, _, trace_s = _forward_passes(cfg, weights, job, n, T, tokens)
    server_states = crypten_compat.exchange_json(None, src=SERVER)
    passes = [{**combine_parties(c, s), "offline": phases.combine_offline(c["offline"], s["offline"])}
              for c, s in zip(states, server_states, strict=True)]
    return {
        "role": "client",
        "config": cfg.to_dict(),
        "tokens": tokens,
        "tokens_source": source,
        "logits": logits,
        "passes": passes,
        "client_states": states,
        "server_states": server_states,
        "weight_sharing_seconds": setup_s,
        "trace_seconds": trace_s,
    }


# ---------------------------------------------------------------------------------------------
# the caller's side


def secure_eval(
    checkpoint: str | os.PathLike,
    protocol: str | os.PathLike,
    seq_len: int | None = None,
    samples: int = 1,
    data: str | os.PathLike | None = None,
    timeout_s: float = 300.0,
    rank: int | None = None,
    world_size: int = 2,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    device: str = "cpu",
    networks_file: str | os.PathLike | None = None,
    seed: int = 0,
    capture_server_view: bool = False,
    on_start=None,
    on_audit=None,
) -> dict[str, Any]:
    """Run `checkpoint` under two CrypTen parties with `protocol`; the result dict. A profile with
    `engine = "spu"` runs under SecretFlow SPU instead (`pi_lnfree.secure.spu_engine`).

    `rank=None`: all parties as local processes. `rank=0|1|2`: this process is that one party of a
    multi-machine run (2 is the TTP dealer); only rank 0 returns the full result.
    With `capture_server_view`, the result also holds `server_view` (the server's shares).
    `on_audit(audit_result)` is called with the range audit (`pi_lnfree.secure.audit`) of the
    client's tokens before the parties start (locally) or when the plaintext is at hand (rank 0)."""
    profile = load_profile(protocol)
    networks = load_networks(networks_file)
    if world_size != 2:
        raise UserError(f"--world-size must be 2 (client and server), got {world_size}")
    if timeout_s <= 0:
        raise UserError(f"--timeout must be positive, got {timeout_s}")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    spec = {"samples": samples, "seq_len": seq_len, "data": str(data) if data else None, "seed": seed}
    if profile.engine == "spu":
        from pi_lnfree.secure import spu_engine

        return spu_engine.secure_eval(checkpoint, profile, spec, timeout_s, rank, device, networks,
                                      capture_server_view, on_start, master_addr, master_port)
    t0 = time.perf_counter()
    if rank is None:
        return _run_local(checkpoint, profile, spec, timeout_s, device, networks, capture_server_view, on_start,
                          on_audit, t0)
    return _run_distributed(checkpoint, profile, spec, timeout_s, rank, master_addr, master_port, device, networks,
                            on_audit, t0)


def _run_local(checkpoint, profile, spec, timeout_s, device, networks, capture, on_start, on_audit, t0):
    from pi_lnfree.checkpoint import load_model, resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    plain_model, _ = load_model(checkpoint, "cpu")
    cfg = plain_model.config
    tokens, source = make_tokens(spec, cfg)
    check_supported(cfg, profile, tokens.size(1))
    range_audit = _audit(plain_model, profile, tokens, source, on_audit)
    jobs = local_jobs(profile, timeout_s, {
        CLIENT: dict(tokens=tokens, token_spec={"source": source}),
        SERVER: dict(checkpoint=str(checkpoint), capture_server_view=capture),
    }, device=device, program=PROGRAM)
    results = launch_local(jobs, timeout_s, on_start=on_start)
    result = assemble_result(str(checkpoint), cfg, profile, results[CLIENT], plain_model, networks,
                             "local processes (gloo on 127.0.0.1)", time.perf_counter() - t0, range_audit)
    if capture:
        result["server_view"] = results[SERVER]["view"]
        result["client_tokens"] = tokens
    return result


def _audit(plain_model, profile, tokens, source, on_audit):
    """The range audit of the client's tokens (plaintext, no MPC), reported before the run."""
    from pi_lnfree.secure.audit import audit

    result = audit(plain_model.config, plain_model.state_dict(), profile, tokens, source)
    if on_audit is not None:
        on_audit(result)
    return result


def _run_distributed(checkpoint, profile, spec, timeout_s, rank, master_addr, master_port, device, networks,
                     on_audit, t0):
    ranks = party_ranks(profile)
    if rank not in ranks:
        raise UserError(f"--rank must be one of {ranks} with provider {profile.provider}, got {rank}")
    if master_port is None:
        raise UserError("--master-port is required with --rank")
    if rank == SERVER:
        from pi_lnfree.checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)
    job = PartyJob(rank=rank, profile=profile, timeout_s=timeout_s, master_addr=master_addr,
                   master_port=int(master_port), device=device, threads=os.cpu_count() or 1,
                   checkpoint=str(checkpoint) if rank == SERVER else None, token_spec=spec, program=PROGRAM)
    # A child process, like the local parties: its own deadlines and torch's C++ log level apply.
    value = launch_local([job], timeout_s)[rank]
    if rank != CLIENT:
        return {"rank": rank, "role": value["role"], "status": "done", "protocol": profile.to_dict(),
                "wall_seconds": time.perf_counter() - t0}
    cfg = ModelConfig.from_dict(value["config"])
    plain_model, range_audit = None, None
    if str(checkpoint) != "-" and Path(checkpoint).is_file():
        from pi_lnfree.checkpoint import load_model

        plain_model, _ = load_model(checkpoint, "cpu")
        range_audit = _audit(plain_model, profile, value["tokens"], value["tokens_source"], on_audit)
    return assemble_result(str(checkpoint), cfg, profile, value, plain_model, networks,
                           f"distributed (rank 0 of 2, rendezvous {master_addr}:{master_port})",
                           time.perf_counter() - t0, range_audit)


__all__ = ["PROGRAM", "party_program", "secure_eval"]
