"""The `pi-lnfree train` command: one run from a recipe, or every run of a matrix file.

A matrix file names a recipe (optional), `variants = [...]` (one run per variant, named after it)
and optional `[runs.NAME]` tables of recipe keys; each run trains into OUT/NAME with the recipe,
the command's --set items and the run's own keys, in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pi_lnfree.checkpoint import load_checkpoint
from pi_lnfree.errors import UserError
from pi_lnfree.recipe import Layer, TrainConfig, load_recipe, load_toml
from pi_lnfree.train import run_training


def recipe_for_run(recipe_path: str | Path | None, sets: list[str], run_dir: Path, resume: bool) -> TrainConfig:
    """The recipe of a run: from --recipe and --set, or, on --resume without --recipe, the one
    stored in the run's checkpoint."""
    if recipe_path is not None:
        return load_recipe(str(recipe_path), sets)
    ckpt = Path(run_dir) / "ckpt.pt"
    if not resume or not ckpt.exists():
        raise UserError("--recipe is required (it may be left out only with --resume of a run that has ckpt.pt)")
    if sets:
        raise UserError("--set needs --recipe (a resumed run keeps the recipe it was started with)")
    return TrainConfig.from_values(load_checkpoint(ckpt)["train"]["recipe"], f"{ckpt} (its stored recipe)")


def load_matrix(path: str | Path) -> tuple[Path | None, list[tuple[str, Layer]]]:
    """A matrix file -> (its recipe path or None, [(run name, the run's own keys as a recipe Layer)]).

    Format: optional `recipe = "cpu.toml"` (relative to the matrix file), `variants = [...]` (one
    run per variant, named after it) and optional `[runs.NAME]` tables of recipe keys, e.g.
    `[runs.hybrid]` with `model = { variant = "sm-hybrid:relu,gelu" }` (a relative path among them
    is relative to the matrix file). The keys are type-checked when the recipe is resolved.
    """
    path = Path(path)
    doc = load_toml(str(path), what="matrix file")
    unknown = sorted(set(doc) - {"recipe", "variants", "runs"})
    if unknown:
        raise UserError(f"{path}: unknown matrix keys {', '.join(unknown)} (known: recipe, variants, runs)")
    recipe = (path.parent / doc["recipe"]) if "recipe" in doc else None
    runs: list[tuple[str, Layer]] = []
    variants = doc.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise UserError(f"{path}: variants must be a list of variant names")
    runs += [(v.replace(":", "-").replace(",", "-"), (f"{path}: variants", {"model": {"variant": v}}, None))
             for v in variants]
    for name, body in (doc.get("runs") or {}).items():
        if not isinstance(body, dict):
            raise UserError(f"{path}: runs.{name} must be a table of recipe sections")
        for sec, keys in body.items():
            if not isinstance(keys, dict):
                raise UserError(f"{path}: runs.{name}.{sec} must be a table (e.g. model = {{ variant = \"sm-r\" }})")
        runs.append((name, (f"{path}: runs.{name}", body, str(path.parent.resolve()))))
    if not runs:
        raise UserError(f"{path}: the matrix lists no variants or runs")
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: run names repeat: {names}")
    return recipe, runs


def train_command(recipe: Path | None, sets: list[str], out: Path, resume: bool = False,
                  matrix: Path | None = None) -> dict[str, Any] | None:
    """`pi-lnfree train`: one run into `out`, or every run of `matrix` into `out/NAME`.

    Returns the run's summary (`{"runs": [...]}` for a matrix); None on torchrun ranks other than 0.
    """
    from pi_lnfree.runtime import setup_runtime, shutdown_runtime

    if matrix is not None:
        matrix_recipe, runs = load_matrix(matrix)
        recipe = recipe or matrix_recipe
        if recipe is None:
            raise UserError("--matrix: give --recipe or name one in the matrix file (recipe = \"...\")")
        plans = [(Path(out) / name, load_recipe(str(recipe), sets, extra=[keys])) for name, keys in runs]
    else:
        plans = [(Path(out), recipe_for_run(recipe, sets, Path(out), resume))]
    first = plans[0][1]
    rt = setup_runtime(first["train.device"], first["train.precision"], first["train.threads"])
    try:
        results = [run_training(r, d, rt, resume=resume) for d, r in plans]
    finally:
        shutdown_runtime(rt)
    if not rt.is_main:
        return None  # under torchrun only rank 0 reports
    return results[0] if matrix is None else {"runs": results}
