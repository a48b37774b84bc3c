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


@pytest.mark.parametrize("args,words", [
    (["eval", "--no-such-flag"], "No such option: --no-such-flag"),
    (["convert"], "Missing option '--from-hf'"),
    (["bogus"], "No such command 'bogus'"),
])
def test_usage_error_is_one_line_and_exits_2(args, words):
    res = subprocess.run([sys.executable, "-m", "pi_lnfree.cli", *args], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0] and "--help" in lines[0]
