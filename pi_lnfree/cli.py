"""The `pi-lnfree` command line: every command is a thin wrapper over library functions.

Conventions: `--json` prints exactly one JSON object on stdout (human output goes to stderr);
bad input raises `UserError`, printed as one line with exit code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from pi_lnfree.errors import UserError
from pi_lnfree.files import to_json
from pi_lnfree.progress import console

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train LayerNorm-free / ReLU decoders, measure perplexity and attention entropy, "
    "and measure their cost under two-party secret sharing (CrypTen).",
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare corpora: tokenizer and token shards.")
app.add_typer(data_app, name="data")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _state["debug"] = debug


FLAGGED = 3  # exit code: the command finished, but its result must not be trusted as is


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print one JSON object on stdout when --json is given (strict JSON: a non-finite number,
    such as an overflowing perplexity, is written as null; the result's warnings say why)."""
    if as_json:
        sys.stdout.write(to_json(_finite(result)) + "\n")
        sys.stdout.flush()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# data


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Option(
        ..., "--source",
        help="python-stdlib | dir:PATH | files:JSONL | hub:DATASET[:CONFIG][,VALID_DATASET[:CONFIG]]",
    ),
    out: Path = typer.Option(..., "--out", help="Data folder to write (reused when the arguments match)."),
    vocab_size: Optional[int] = typer.Option(
        None, "--vocab-size", help="Train a byte-level BPE of this size on the train split."
    ),
    tokenizer: Optional[Path] = typer.Option(
        None, "--tokenizer",
        help="Use this tokenizer.json (a file, its folder, or hub:REPO) instead of training one.",
    ),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per chunk; a shorter last chunk is dropped."),
    valid_fraction: float = typer.Option(
        0.01, "--valid-fraction", help="Share of documents hashed into validation (sources without a split)."
    ),
    text_column: str = typer.Option("content", "--text-column", help="Text field of hub:/files: records."),
    glob: str = typer.Option("*.py", "--glob", help="File pattern for dir: and python-stdlib sources."),
    limit_mb: Optional[float] = typer.Option(
        None, "--limit-mb", help="Stop reading once this many MB of text were read."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a folder prepared differently."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object on stdout."),
) -> None:
    """Tokenize a corpus into train/valid token shards and a tokenizer."""
    from pi_lnfree.data import describe, prepare

    manifest = prepare(
        source, out, vocab_size=vocab_size, seq_len=seq_len, valid_fraction=valid_fraction,
        tokenizer=tokenizer, text_column=text_column, glob=glob, limit_mb=limit_mb, overwrite=overwrite,
    )
    verb = "reused" if manifest["reused"] else f"wrote in {manifest['seconds']:.1f}s"
    console.print(f"{verb} {out}: {describe(manifest)}", highlight=False)
    emit(manifest, as_json)


# ---------------------------------------------------------------------------------------------
# train


@app.command()
def train(
    recipe: Optional[Path] = typer.Option(
        None, "--recipe", help="Recipe: a TOML file or a shipped name (cpu, tiny, gpt2-codeparrot, "
        "pythia-70m-codeparrot). Optional with --resume."
    ),
    sets: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a recipe key: section.key=VALUE (a TOML value, e.g. model.activation=relu)."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory (with --matrix: the parent of one folder per run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where its ckpt.pt left off."),
    matrix: Optional[Path] = typer.Option(
        None, "--matrix", help="Matrix: a TOML file or a shipped name (paper-variants, hybrid-variants); "
        "trains every listed variant into OUT/NAME."
    ),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="Start from this checkpoint's weights (a ckpt.pt or run dir; same shapes as the "
        "recipe's model), e.g. a converted GPT-2. Same as --set train.init_from=PATH."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a model from a recipe (TOML) into a run directory: ckpt.pt, best.pt, metrics.jsonl, recipe.toml."""
    from pi_lnfree.runs import train_command

    sets = list(sets or [])
    if init_from is not None:
        sets.append(f"train.init_from={json.dumps(str(init_from))}")
    result = train_command(recipe, sets, out, resume=resume, matrix=matrix)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    runs = result["runs"] if "runs" in result else [result]
    for r in runs:
        ppl = f", eval ppl {r['eval_ppl']:.3f}" if r.get("eval_ppl") else ""
        console.print(f"{r['label']}: {r['steps']} steps{ppl} -> {r['run_dir']}", highlight=False)
    emit(result, as_json)


# ---------------------------------------------------------------------------------------------
# eval / entropy


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A ckpt.pt, or a run dir holding one."),
    data: Path = typer.Option(..., "--data", help="A prepared data folder (its validation split is used)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per batch."),
    batches: Optional[int] = typer.Option(
        None, "--batches", help="Use only the first N batches (N x batch-size sequences); default: all."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Cross-entropy and perplexity of a checkpoint on a data folder's validation split."""
    from pi_lnfree.diagnostics import eval_checkpoint

    result = eval_checkpoint(checkpoint, data, batch_size, batches, show_progress=True)
    console.print(
        f"{result['label']} ({result['variant']}): loss {result['loss']:.4f}, ppl {result['ppl']:.4f} "
        f"over {result['tokens']:,} tokens ({result['sequences']:,} sequences)",
        soft_wrap=True,
    )
    emit(result, as_json)


@app.command()
def entropy(
    checkpoint: Path = typer.Argument(..., help="A ckpt.pt, or a run dir holding one (and metrics.jsonl)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="A prepared data folder (validation split); needed unless only --dynamics."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per batch."),
    batches: Optional[int] = typer.Option(
        None, "--batches", help="Use only the first N batches (N x batch-size sequences); default: all."
    ),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a layers x heads heatmap PNG here."),
    dynamics: Optional[Path] = typer.Option(
        None, "--dynamics", help="Write entropy (and slope) over training steps from the run's metrics.jsonl."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Headwise attention entropy of a checkpoint, entropy bands, heatmap and dynamics."""
    from pi_lnfree import diagnostics as dg
    from pi_lnfree.tables import entropy_summary_lines, entropy_table

    if data is None and dynamics is None:
        raise UserError("give --data DIR (entropy on its validation split) and/or --dynamics PNG (from a run dir)")
    if plot is not None and data is None:
        raise UserError("--plot needs --data DIR")
    result: dict[str, Any] = {}
    if data is not None:
        result = dg.entropy_checkpoint(checkpoint, data, batch_size, batches, show_progress=True)
        console.print(entropy_table(result))
        for line in entropy_summary_lines(result):
            console.print(line, highlight=False, soft_wrap=True)
        if plot is not None:
            from pi_lnfree.plots import write_entropy_heatmap

            result["plot"] = str(write_entropy_heatmap(result, plot))
            console.print(f"wrote {plot}", soft_wrap=True)
    if dynamics is not None:
        dyn = dg.run_dynamics(checkpoint)
        result["dynamics"] = dyn
        from pi_lnfree.plots import write_dynamics_figure

        result["dynamics_plot"] = str(write_dynamics_figure(dyn, dynamics))
        console.print(f"wrote {dynamics} ({len(dyn['steps'])} entropy records)", soft_wrap=True)
    emit(result, as_json)


# ---------------------------------------------------------------------------------------------
# secure evaluation and cost model


@app.command("secure-eval")
def secure_eval(
    checkpoint: Path = typer.Argument(
        ..., help="A ckpt.pt or a run dir holding one. With --rank 0 it is only the plaintext reference "
        "for fidelity ('-': none); with --rank 1 it holds the weights the server shares."
    ),
    protocol: Path = typer.Option(
        ..., "--protocol", help="Protocol profile: a TOML file or a shipped name (crypten-2pc-ttp, crypten-2pc-tfp, ...)."
    ),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence (default: 32, or the data folder's length)."),
    samples: int = typer.Option(1, "--samples", help="Sequences evaluated securely (costs are per sequence, averaged)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder: the client's tokens are its first validation sequences (default: seeded random tokens)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds a party waits for a dead or absent peer before failing."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Run only this party here: 0 client, 1 server, 2 TTP dealer (default: all as local processes)."),
    world_size: int = typer.Option(2, "--world-size", help="Parties (always 2; the TTP dealer is extra)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Rendezvous host (rank 0's machine) with --rank."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Rendezvous TCP port with --rank."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (shares on the GPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Run a checkpoint under two real CrypTen parties and meter each operator.

    Threat model: two parties, semi-honest (they follow the protocol and try to learn from what
    they see). The client (rank 0) holds the token ids; the server (rank 1) holds the weights.
    Both inputs are additively secret-shared over Z_2^64 (16-bit fixed point); only the client
    learns the output logits. Model shapes (the config) are public. Beaver triples come from the
    profile's provider: TTP, a separate dealer process that must not collude with either party
    (semi-honest; the shipped default), or TFP, where party 0 generates every triple and could
    learn every secret: BENCHMARK ONLY, and marked so in the output.

    Costs per operator category (embedding, linear, attention, softmax, layernorm, activation,
    lm_head, other): bytes both parties send, communication rounds, local seconds, per sequence
    and per token, with LAN/WAN latency estimates from protocols/networks.toml. Fidelity: secure vs
    plaintext logits (max/mean abs error, top-1 agreement, perplexities). Fixed point alone
    (16 fractional bits) costs about 1e-3..1e-2 in the logits of GPT-2-sized layers (each value
    within 2^-17, each product's truncation within 2^-16, summed over a layer's fan-in); the
    nonlinear approximations add more, which is why the errors are measured and reported.

    Before the parties start, the range audit (`pi-lnfree audit`) checks on the plaintext model
    that every secure approximation will see inputs inside its valid range, and warns otherwise.

    Two machines: run `--rank 1` where the checkpoint is and `--rank 0` on the client's machine
    (plus `--rank 2` for a TTP dealer), all with the same --master-addr/--master-port.

    A profile with engine = "spu" (protocols/spu-semi2k.toml, spu-cheetah.toml, spu-aby3.toml)
    runs the same checkpoint under SecretFlow SPU instead: party processes in the SPU environment
    (`make spu`), the same roles, categories, result and --rank options (rank 2: ABY3's helper);
    no --device cuda.

    Exit codes: 0 done; 2 bad input or a party failed; 3 done, but the result is flagged (an
    input outside an approximation's valid range, or an infinite secure perplexity): the measured
    costs are printed and in --json all the same, with `flags` saying why.
    """
    from pi_lnfree.secure.crypten_compat import require_crypten
    from pi_lnfree.secure.evaluate import secure_eval as run_secure_eval
    from pi_lnfree.secure_view import print_audit_warnings, print_secure_result

    require_crypten()

    result = run_secure_eval(
        checkpoint, protocol, seq_len=seq_len, samples=samples, data=data, timeout_s=timeout, rank=rank,
        world_size=world_size, master_addr=master_addr, master_port=master_port, device=device,
        on_audit=lambda a: print_audit_warnings(a, console),
    )
    print_secure_result(result, console)
    emit(result, as_json)
    if result.get("flags"):
        sys.exit(FLAGGED)


@app.command()
def audit(
    checkpoint: Path = typer.Argument(..., help="A ckpt.pt or a run dir holding one."),
    protocol: Path = typer.Option(..., "--protocol", help="Protocol profile TOML (protocols/crypten-2pc-ttp.toml, ...)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence (default: 32, or the data folder's length)."),
    samples: int = typer.Option(1, "--samples", help="Sequences to audit."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder: its first validation sequences (default: seeded random tokens)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Check, without MPC and in seconds, that a checkpoint evaluates correctly under a profile.

    Runs the plaintext model (float64) on the tokens secure-eval would use and records what each
    secure approximation will see, per layer and operator: softmax exp input and row sums,
    LayerNorm variances, GELU pre-activations, largest matmul outputs (fixed-point headroom).
    Compares them with the valid ranges derived for the profile's settings and prints the
    headroom; an input outside its range is reported with the setting that would fix it.
    Exit codes: 0 every input in range; 2 bad input; 3 some input outside its valid range.
    """
    from pi_lnfree.checkpoint import load_model, resolve_checkpoint
    from pi_lnfree.secure.audit import audit as run_audit
    from pi_lnfree.secure.profile import load_profile
    from pi_lnfree.secure.structure import check_supported
    from pi_lnfree.secure.tokens import make_tokens
    from pi_lnfree.secure_view import print_audit

    profile = load_profile(protocol)
    path = resolve_checkpoint(checkpoint)
    model, _ = load_model(path, "cpu")
    tokens, source = make_tokens({"samples": samples, "seq_len": seq_len, "data": str(data) if data else None},
                                 model.config)
    check_supported(model.config, profile, tokens.size(1))
    result = {"checkpoint": str(path), **run_audit(model.config, model.state_dict(), profile, tokens, source)}
    print_audit(result, console)
    emit(result, as_json)
    if not result["ok"]:
        sys.exit(FLAGGED)


@app.command()
def cost(
    checkpoint: Optional[Path] = typer.Argument(None, help="A ckpt.pt or a run dir holding one (only its config is used)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Shape preset instead of a checkpoint."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Variant with --preset (sm-ln-g, sm-r, ...)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary with --preset (default 50257)."),
    sets: list[str] = typer.Option([], "--set", help="Model override model.KEY=VALUE (e.g. model.final_norm=false)."),
    protocol: Optional[Path] = typer.Option(
        None, "--protocol", help="Protocol profile (calibrated): a TOML file or a shipped name (crypten-2pc-ttp, ...)."
    ),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence."),
    calibrate: Optional[Path] = typer.Option(
        None, "--calibrate", help="Calibrate this profile (a TOML file or a shipped name): small real secure "
        "runs, unit costs saved next to it."
    ),
    networks: Optional[Path] = typer.Option(None, "--networks", help="Network profiles TOML (default: the shipped protocols/networks.toml)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Predict secure-inference cost from calibrated per-operator unit costs (no MPC run).

    Bytes and rounds of CrypTen and of SPU SEMI2K and ABY3 depend only on shapes and protocol
    knobs: they are predicted exactly from unit costs measured once per profile (`--calibrate
    PROFILE`, stored as protocols/PROFILE.calibration.json); SPU CHEETAH's are a least-squares
    fit (its largest residual is in the calibration). Seconds are an estimate of local compute on
    the calibration machine; LAN/WAN latency = compute + rounds x RTT + bytes / bandwidth.
    Prints the JSON shape of `secure-eval` (without fidelity) with "predicted": true.
    """
    if calibrate is not None:
        from pi_lnfree.secure.calibrate import calibrate as run_calibration
        from pi_lnfree.secure.crypten_compat import require_crypten
        from pi_lnfree.secure.profile import load_profile

        if checkpoint or preset or variant or protocol or seq_len:
            raise UserError("--calibrate PROFILE takes no model, --protocol or --seq-len")
        if load_profile(calibrate).engine == "spu":
            from pi_lnfree.secure.spu_engine import spu_python

            spu_python()  # one line on how to install the SPU environment when it is missing
        else:
            require_crypten()
        console.print(f"calibrating {calibrate}: small secure runs of every primitive (minutes; SPU CHEETAH longer)")
        result = run_calibration(calibrate)
        console.print(f"wrote {result['calibration']} ({result['points']} points, {result['calibration_seconds']} s)")
        emit(result, as_json)
        return
    from pi_lnfree.secure import costmodel
    from pi_lnfree.secure.profile import load_networks, load_profile
    from pi_lnfree.secure_view import print_prediction

    if protocol is None or seq_len is None:
        raise UserError("give --protocol PROFILE and --seq-len T (or --calibrate PROFILE)")
    cfg = costmodel.resolve_config(checkpoint, preset, variant, vocab_size, sets)
    profile = load_profile(protocol)
    result = costmodel.predict(cfg, profile, seq_len, networks=load_networks(networks),
                               checkpoint=str(checkpoint) if checkpoint else None)
    print_prediction(result, console)
    emit(result, as_json)


# ---------------------------------------------------------------------------------------------
# report


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run dirs written by `pi-lnfree train` (ckpt.pt, metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.csv, tables/ and figures/."),
    no_compute: bool = typer.Option(
        False, "--no-compute", help="Only read results cached in the run dirs; mark the rest n/a with the reason."
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder for eval/entropy/secure tokens (default: each run's own)."),
    protocol: Optional[list[Path]] = typer.Option(None, "--protocol", help="Protocol profile for secure-eval and the cost model: a TOML file or a shipped name (default crypten-2pc-ttp). Repeat it to compare engines: the first profile fills the per-family tables, and a cross-engine table and figure show every profile's measured cost and savings side by side."),
    secure_seq_len: int = typer.Option(32, "--secure-seq-len", help="Tokens per sequence under secure-eval (0: skip secure-eval)."),
    samples: int = typer.Option(1, "--samples", help="Validation sequences per run under secure-eval."),
    cost_seq_len: Optional[int] = typer.Option(None, "--cost-seq-len", help="Sequence length for the cost model (default: the model's context; 0: skip)."),
    eval_batch_size: int = typer.Option(16, "--eval-batch-size", help="Sequences per eval batch."),
    eval_batches: Optional[int] = typer.Option(None, "--eval-batches", help="Eval on the first N batches only (default: the whole validation split)."),
    entropy_batch_size: int = typer.Option(16, "--entropy-batch-size", help="Sequences per entropy batch."),
    entropy_batches: int = typer.Option(8, "--entropy-batches", help="Entropy over the first N batches."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds a secure-eval party waits for its peer."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the tables as records) on stdout."),
) -> None:
    """Tables and figures across run directories: eval PPL, entropy overload, measured and
    predicted private-inference cost, savings vs SM+LN+G, per-operator shares.

    Results are cached in each run dir (eval.json, entropy.json, secure-PROTOCOL-T{T}.json,
    cost-PROTOCOL-T{T}.json) and reused when their settings match. With several --protocol
    profiles, each one's secure-eval is cached in its own file.
    """
    from pi_lnfree.report import ReportOptions, make_report
    from pi_lnfree.resources import DEFAULT_PROTOCOL

    opts = ReportOptions(
        data=data, compute=not no_compute, eval_batch_size=eval_batch_size, eval_batches=eval_batches,
        entropy_batch_size=entropy_batch_size, entropy_batches=entropy_batches,
        protocol=protocol[0] if protocol else DEFAULT_PROTOCOL, compare=list(protocol[1:]) if protocol else [],
        secure_seq_len=secure_seq_len, samples=samples,
        cost_seq_len=cost_seq_len, timeout_s=timeout,
    )
    command = "pi-lnfree " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["report"] else "pi-lnfree report"
    result = make_report(run_dirs, out, opts, command=command)
    console.print(f"wrote {result['report']}, {result['csv']} and {len(result['files']) - 2} tables/figures", soft_wrap=True)
    emit(result, as_json)


# ---------------------------------------------------------------------------------------------
# convert


@app.command()
def convert(
    from_hf: Path = typer.Option(..., "--from-hf", help="A saved Hugging Face GPT-2 or GPT-NeoX model folder."),
    out: Path = typer.Option(..., "--out", help="Where to write the pi-lnfree checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Convert a saved Hugging Face GPT2LMHeadModel / GPTNeoXForCausalLM into a checkpoint."""
    from pi_lnfree.hf import convert_folder

    result = convert_folder(from_hf, out)
    console.print(f"wrote {out} ({result['variant']}, {result['parameters']:,} parameters)")
    emit(result, as_json)


def _one_line_error(message: str, code: int) -> None:
    console.print(f"[red]error:[/red] {' '.join(message.split())}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _is_usage_error(exc: Exception) -> bool:
    # Typer vendors its own copy of Click, so its exception classes are matched by shape.
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point. Bad input (a `UserError` or a usage error such as an unknown
    option) -> one line on stderr and exit code 2; `--debug` shows the traceback instead.

    Returns normally on success (so tests can call `main([...])`).
    """
    try:
        code = app(args=argv, prog_name="pi-lnfree", standalone_mode=False)
    except UserError as e:
        if _state["debug"]:
            raise
        _one_line_error(str(e), 2)
    except KeyboardInterrupt:
        _one_line_error("interrupted", 130)
    except Exception as e:
        if not _is_usage_error(e) or _state["debug"]:
            raise
        if not e.format_message().strip():  # no arguments at all: the help was just printed
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _one_line_error(e.format_message() + hint, e.exit_code)
    else:
        if isinstance(code, int) and code != 0:  # e.g. `ctx.exit(1)` inside a command
            sys.exit(code)


if __name__ == "__main__":
    main()
