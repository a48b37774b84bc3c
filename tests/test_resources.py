"""Shipped protocol profiles, network profiles and recipes: named without a path from any folder,
a path given by the user wins, an unknown name is a one-line error listing the shipped names."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pi_lnfree.cli import main
from pi_lnfree.errors import UserError
from pi_lnfree.recipe import load_recipe
from pi_lnfree.resources import (
    PROTOCOLS,
    RECIPES,
    networks_file,
    protocol_file,
    recipe_file,
    shipped_dir,
    shipped_names,
)
from pi_lnfree.runs import load_matrix
from pi_lnfree.secure.costmodel import calibration_path, load_calibration
from pi_lnfree.secure.profile import load_networks, load_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A current directory outside the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_shipped_folders_are_the_repository_folders():
    # The repository's protocols/ and training/ are links to the package folders, so a path
    # typed from the repository root and a shipped name mean the same file.
    assert shipped_dir(PROTOCOLS) == REPO / "pi_lnfree" / "protocols"
    assert (REPO / "protocols").resolve() == shipped_dir(PROTOCOLS).resolve()
    assert (REPO / "training").resolve() == shipped_dir(RECIPES).resolve()
    assert {"crypten-2pc-ttp", "crypten-2pc-tfp"} <= set(shipped_names(PROTOCOLS))
    assert "networks" not in shipped_names(PROTOCOLS)
    assert {"cpu", "tiny", "paper-variants"} <= set(shipped_names(RECIPES))


def test_a_shipped_profile_is_found_by_name_from_any_folder(elsewhere):
    for name in ("crypten-2pc-ttp", "crypten-2pc-ttp.toml"):
        path = protocol_file(name)
        assert path.is_file() and path.samefile(REPO / "protocols" / "crypten-2pc-ttp.toml")
    profile = load_profile("crypten-2pc-tfp")
    assert profile.name == "crypten-2pc-tfp" and profile.provider == "TFP"
    assert Path(profile.path).samefile(REPO / "protocols" / "crypten-2pc-tfp.toml")


def test_every_shipped_profile_has_its_calibration_shipped(elsewhere):
    for name in shipped_names(PROTOCOLS):  # CrypTen and SPU profiles alike
        cal = calibration_path(name)
        assert cal == shipped_dir(PROTOCOLS) / f"{name}.calibration.json" and cal.is_file()
    cal = load_calibration(load_profile("crypten-2pc-ttp"))  # checked against the profile's knobs
    assert Path(cal.path).samefile(REPO / "protocols" / "crypten-2pc-ttp.calibration.json")


def test_a_path_wins_over_a_shipped_name(elsewhere):
    local = elsewhere / "crypten-2pc-ttp.toml"
    local.write_text('[protocol]\nname = "mine"\nprovider = "TFP"\n')
    assert load_profile("crypten-2pc-ttp.toml").name == "mine"  # the file in the current folder
    assert load_profile(local).name == "mine"
    assert load_profile("crypten-2pc-ttp").name == "crypten-2pc-ttp"  # no file of that exact name here


@pytest.mark.parametrize("given", ["nope", "protocols/crypten-2pc-ttp.toml", "networks"])
def test_an_unknown_profile_lists_the_shipped_names(elsewhere, given):
    # A path with a folder part is a path: outside the repository it does not exist.
    with pytest.raises(UserError, match="protocol profile not found") as err:
        protocol_file(given)
    assert "crypten-2pc-ttp, " in str(err.value) and "networks" not in str(err.value).split("(")[-1]


def test_a_folder_is_not_a_profile(elsewhere):
    (elsewhere / "crypten-2pc-ttp").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        protocol_file("crypten-2pc-ttp")


def test_network_profiles_default_to_the_shipped_file(elsewhere):
    shipped = tomllib.loads((REPO / "protocols" / "networks.toml").read_text())
    nets = load_networks()
    assert set(nets) == set(shipped) == {"lan", "wan"}
    assert nets["wan"].rtt_ms == shipped["wan"]["rtt_ms"] == 80.0
    assert networks_file("networks") == networks_file()
    with pytest.raises(UserError, match=r"network profiles not found: .*\(networks\)"):
        networks_file("crypten-2pc-ttp")  # a protocol profile is not a network profile


def test_a_shipped_recipe_keeps_its_data_folder_in_the_current_directory(elsewhere):
    cfg = load_recipe(str(recipe_file("cpu")))
    assert cfg["data.dir"] == str(elsewhere / "data" / "stdlib-4096")
    recipe, runs = load_matrix("paper-variants")
    assert recipe == recipe_file("cpu") and ("sm-r", {"model": {"variant": "sm-r"}}) in [(n, doc) for n, (_, doc, _) in runs]


@pytest.mark.parametrize("args, words", [
    (["train", "--recipe", "nope", "--out", "run"], "recipe not found: nope is not a file, nor a shipped name (cpu,"),
    (["train", "--matrix", "nope", "--out", "run"], "matrix file not found: nope"),
    (["cost", "--preset", "tiny", "--variant", "sm-r", "--seq-len", "8", "--protocol", "nope"],
     "protocol profile not found: nope"),
    (["secure-eval", "x.pt", "--protocol", "nope"], "protocol profile not found: nope"),
])
def test_cli_unknown_names_are_one_line_errors(elsewhere, capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and words in lines[0], err
    assert not (elsewhere / "run").exists()
