"""The command-line shell: every command of DESIGN.md exists and explains itself."""

import subprocess
import sys

import pytest

from pi_lnfree.cli import main

COMMANDS = ["data", "train", "eval", "entropy", "secure-eval", "cost", "report", "convert"]


def test_help_lists_every_command():
    res = subprocess.run([sys.executable, "-m", "pi_lnfree.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for command in COMMANDS:
        assert f" {command} " in res.stdout


@pytest.mark.parametrize("command", [["data", "prepare"], *[[c] for c in COMMANDS if c != "data"]])
def test_every_command_has_help(command, capsys):
    main([*command, "--help"])
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 4


def test_usage_error_exits_2():
    res = subprocess.run([sys.executable, "-m", "pi_lnfree.cli", "eval", "--no-such-flag"], capture_output=True, text=True)
    assert res.returncode == 2
