"""Human output (a rich console, stderr) of the secure commands' results: `secure-eval` and
`cost` (per-operator table, totals, fidelity, security line). The results themselves are built
in `pi_lnfree.secure`; this is the presentation side."""

from __future__ import annotations

from typing import Any


def print_secure_result(result: dict[str, Any], console) -> None:
    """Human output (stderr console): per-operator table, totals, fidelity, security line."""
    if "ops" not in result:
        console.print(f"{result['role']} (rank {result['rank']}) done in {result['wall_seconds']:.1f} s")
        return
    from rich.table import Table

    from pi_lnfree.secure.meter import CATEGORIES

    net = result["network"]
    table = Table(title=f"{result['variant']} under {result['protocol']['name']}, T={result['seq_len']} "
                        f"(per sequence, mean of {result['samples']})")
    for col in ("operator", "MB sent", "rounds", "local s", "LAN s", "WAN s", "% bytes"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    total_bytes = result["total"]["bytes"] or 1.0
    rows = [(c, result["ops"][c], net["lan"]["ops"][c], net["wan"]["ops"][c]) for c in CATEGORIES]
    rows.append(("total", result["total"], net["lan"]["seconds"], net["wan"]["seconds"]))
    for name, op, lan, wan in rows:
        table.add_row(name, f"{op['bytes'] / 1e6:,.2f}", f"{op['rounds']:,.0f}", f"{op['seconds']:.3f}",
                      f"{lan:.3f}", f"{wan:.2f}", f"{100 * op['bytes'] / total_bytes:.1f}")
    console.print(table)
    pt = result["per_token"]
    console.print(f"per token: {pt['bytes'] / 1e6:,.3f} MB, {pt['rounds']:.1f} rounds, {pt['seconds']:.3f} s local")
    if result["total"]["dealer_bytes"]:
        console.print(f"TTP dealer traffic (preprocessing, not in the totals): "
                      f"{result['total']['dealer_bytes'] / 1e6:,.2f} MB in {result['total']['dealer_requests']:,.0f} requests")
    fid = result["fidelity"]
    if fid:
        ppl = ""
        if fid["plain_ppl"] is not None:
            ppl = f", ppl plain {fid['plain_ppl']:.4g} / secure {fid['secure_ppl']:.4g}"
        console.print(f"fidelity: max |logit error| {fid['max_abs_logit_error']:.3g}, mean {fid['mean_abs_logit_error']:.3g}, "
                      f"top-1 agreement {fid['top1_agreement']:.4f}{ppl}")
    style = "bold red" if result["benchmark_only"] else "green"
    console.print(f"[{style}]security: {result['security']}[/{style}]")
    for flag in result.get("flags") or []:
        console.print(f"[bold yellow]warning:[/bold yellow] {flag}", soft_wrap=True, highlight=False)


def _limit(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def print_audit(result: dict[str, Any], console) -> None:
    """Human output of `pi-lnfree audit`: one row per site and approximation, then warnings."""
    from rich.table import Table

    table = Table(title=f"range audit under {result['profile']}, T={result['seq_len']}, "
                        f"{result['samples']} sequence(s) ({result['tokens']})")
    for col in ("site", "approximation", "observed", "valid", "headroom", "ok"):
        table.add_column(col, justify="left" if col in ("site", "approximation") else "right")
    for c in result["checks"]:
        lo, hi = c["observed"]
        head = "-" if c["headroom"] is None else f"{100 * c['headroom']:.0f}%"
        table.add_row(c["site"], c["approximation"], f"[{lo:.4g}, {hi:.4g}]",
                      f"[{_limit(c['valid'][0])}, {_limit(c['valid'][1])}]", head,
                      "yes" if c["ok"] else "[bold red]NO[/bold red]")
    console.print(table)
    print_audit_warnings(result, console)
    if result["ok"]:
        console.print("every secure approximation sees inputs inside its valid range", style="green")


def print_audit_warnings(result: dict[str, Any], console) -> None:
    """One line per input outside its valid range, with the setting that would fix it."""
    for warning in result["warnings"]:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", soft_wrap=True, highlight=False)



def print_prediction(result: dict[str, Any], console) -> None:
    """Human output of `pi-lnfree cost`: secure-eval's per-operator table, then what is predicted
    and from what."""
    print_secure_result({**result, "fidelity": None}, console)
    console.print(f"predicted from {result['calibration']['path']} (no parties run): {result['seconds_note']}",
                  style="dim", soft_wrap=True)


__all__ = ["print_audit", "print_audit_warnings", "print_prediction", "print_secure_result"]
