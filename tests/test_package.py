"""The installable package: a wheel built from the project, installed into a fresh virtual
environment, runs `pi-lnfree cost` and `pi-lnfree secure-eval` with shipped profiles named
without a path from a folder outside the repository; an editable install finds the same files;
without CrypTen the secure commands say in one line how to install it.

The fresh environments reuse the dependencies of the environment running the tests (torch,
CrypTen, ...) through a `.pth` file listing its site-packages folders. A `.pth` line only adds a
folder to `sys.path`: the `.pth` files inside it (such as the test environment's own editable
pi-lnfree finder) are not run, so `pi_lnfree` can only come from the fresh environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT
from pi_lnfree.secure import crypten_compat

REPO = Path(__file__).resolve().parents[1]
# What a checkout may hold besides the project's files; none of it belongs in the source copy.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
              "runs", "data", "reports", ".demo", ".whl")
COST = ["cost", "--preset", "tiny", "--variant", "sm-r", "--vocab-size", "512", "--seq-len", "16",
        "--protocol", "crypten-2pc-ttp", "--json"]


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res


def _fresh_env(where: Path) -> Path:
    """A virtual environment without pip that sees this environment's installed packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    deps = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))] + sorted(ours)
    (Path(purelib) / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(deps)))
    return python


def _pip(python: Path, *args: str, cwd: Path) -> None:
    """This environment's pip acting on the environment of `python`."""
    _run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args], cwd=cwd)


def _script(python: Path) -> str:
    return str(python.parent / ("pi-lnfree.exe" if os.name == "nt" else "pi-lnfree"))


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The project's files copied outside the checkout, so that building and installing writes
    nothing into it (setuptools puts build/ and *.egg-info next to the sources)."""
    src = tmp_path_factory.mktemp("src") / "pi-lnfree"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return src


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_and_runs_cost_and_secure_eval_from_anywhere(source_copy, tmp_path):
    wheels = tmp_path / "wheels"
    # Without setuptools here, pip builds in isolation (and fetches setuptools from the index).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels), str(source_copy)],
         cwd=tmp_path)
    (wheel,) = wheels.glob("pi_lnfree-*.whl")
    python = _fresh_env(tmp_path / "venv")
    _pip(python, "install", "-q", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    site = Path(_run([str(python), "-c", "import pi_lnfree, os; print(os.path.dirname(pi_lnfree.__file__))"],
                     cwd=tmp_path).stdout.strip())
    assert site.is_relative_to(tmp_path / "venv"), site  # the wheel's copy, not the checkout

    away = tmp_path / "elsewhere"
    away.mkdir()
    cost = json.loads(_run([_script(python), *COST], cwd=away).stdout)
    assert cost["predicted"] is True and cost["seq_len"] == 16 and cost["variant"] == "sm-r" and cost["label"] == "SM+R"
    assert Path(cost["protocol"]["path"]) == site / "protocols" / "crypten-2pc-ttp.toml"
    assert Path(cost["calibration"]["path"]) == site / "protocols" / "crypten-2pc-ttp.calibration.json"

    torch.manual_seed(0)
    cfg = make_config("tiny", "sm-r", vocab_size=512)
    save_checkpoint(away / "ckpt.pt", GPT(cfg).state_dict(), cfg)
    measured = json.loads(_run([_script(python), "secure-eval", "ckpt.pt", "--protocol", "crypten-2pc-ttp",
                                "--seq-len", "16", "--samples", "1", "--timeout", "120", "--json"], cwd=away).stdout)
    assert Path(measured["protocol"]["path"]) == site / "protocols" / "crypten-2pc-ttp.toml"
    # The cost model predicts CrypTen's traffic exactly: the two installed commands agree.
    for key in ("bytes", "rounds", "dealer_bytes", "dealer_requests"):
        assert measured["total"][key] == cost["total"][key], key
    fid = measured["fidelity"]
    assert fid["max_abs_logit_error"] < 0.05 and abs(fid["secure_ppl"] / fid["plain_ppl"] - 1) < 0.01
    assert sorted(p.name for p in away.iterdir()) == ["ckpt.pt"]  # nothing written where it ran


@pytest.mark.slow
def test_editable_install_finds_the_shipped_files(source_copy, tmp_path):
    python = _fresh_env(tmp_path / "venv")
    _pip(python, "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-e", str(source_copy),
         cwd=tmp_path)
    code = ("import pi_lnfree.resources as r; print(r.protocol_file('crypten-2pc-ttp')); "
            "print(r.networks_file()); print(r.recipe_file('cpu'))")
    found = _run([str(python), "-c", code], cwd=tmp_path).stdout.split()
    pkg = source_copy / "pi_lnfree"
    assert found == [str(pkg / "protocols" / "crypten-2pc-ttp.toml"), str(pkg / "protocols" / "networks.toml"),
                     str(pkg / "recipes" / "cpu.toml")]


@pytest.mark.parametrize("args", [
    ["secure-eval", "ckpt.pt", "--protocol", "crypten-2pc-ttp"],
    ["cost", "--calibrate", "crypten-2pc-ttp"],
])
def test_secure_commands_without_crypten_say_how_to_install_it(monkeypatch, capsys, args):
    monkeypatch.setitem(sys.modules, "crypten", None)  # `import crypten` now fails as if absent
    with pytest.raises(SystemExit) as exit_:
        main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert "CrypTen is not installed" in lines[0] and "pip install --no-deps crypten==0.4.1" in lines[0]
    with pytest.raises(UserError, match="pip install --no-deps crypten==0.4.1"):
        crypten_compat.get_crypten()  # the library path says the same
