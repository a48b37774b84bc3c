"""Files that ship inside the package: protocol and network profiles, training recipes.

They live in `pi_lnfree/protocols/` (`*.toml` profiles, `networks.toml`, the
`*.calibration.json` of each profile) and `pi_lnfree/recipes/` (recipes and matrix files), are
installed with the package (`[tool.setuptools.package-data]`), and are found through
`importlib.resources`, so they work the same from a source checkout, an editable install and a
wheel. The repository's `protocols/` and `training/` are links to these folders.

Every command that takes one of these files accepts either a path or a shipped name: a path wins
when it exists; otherwise a bare name (`crypten-2pc-ttp`, `cpu`; `.toml` may be added) is looked
up among the shipped files; anything else is a `UserError` that lists the shipped names.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from pi_lnfree.errors import UserError

PROTOCOLS = "protocols"
RECIPES = "recipes"
NETWORKS = "networks"  # the network profiles file in PROTOCOLS, not a protocol profile
DEFAULT_PROTOCOL = "crypten-2pc-ttp"


def shipped_dir(folder: str) -> Path:
    """The installed folder `pi_lnfree/<folder>` on the file system.

    pip always installs a package unpacked, so the folder is a real directory; a zip import
    (which pi-lnfree does not support) is refused with a UserError.
    """
    root = resources.files("pi_lnfree") / folder
    if not isinstance(root, Path) or not root.is_dir():
        raise UserError(f"the package's {folder}/ folder is missing at {root}: reinstall pi-lnfree")
    return root


def shipped_names(folder: str) -> list[str]:
    """Names (file stems) of the TOML files shipped in `folder`, sorted; for PROTOCOLS without
    the network profiles file."""
    names = sorted(p.stem for p in shipped_dir(folder).glob("*.toml"))
    return [n for n in names if not (folder == PROTOCOLS and n == NETWORKS)]


def find_file(name_or_path: str | os.PathLike, folder: str, what: str, names: list[str] | None = None) -> Path:
    """The file meant by `name_or_path`: the path itself when it exists, else the shipped file of
    that bare name (with or without `.toml`) among `names` in `folder` (default: all of
    `shipped_names(folder)`).

    Raises UserError (naming `what`, e.g. "protocol profile", and listing the shipped names)
    when neither exists, and when the path is a folder.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a TOML file")
    text = os.fspath(name_or_path)
    stem = text[: -len(".toml")] if text.endswith(".toml") else text
    bare = os.sep not in text and (os.altsep is None or os.altsep not in text)
    names = shipped_names(folder) if names is None else names
    if bare and stem in names:
        return shipped_dir(folder) / f"{stem}.toml"
    raise UserError(f"{what} not found: {text} is not a file, nor a shipped name ({', '.join(names)})")


def protocol_file(name_or_path: str | os.PathLike) -> Path:
    """A protocol profile: a TOML path, or a shipped name such as `crypten-2pc-ttp`."""
    return find_file(name_or_path, PROTOCOLS, "protocol profile")


def networks_file(name_or_path: str | os.PathLike | None = None) -> Path:
    """Network profiles: a TOML path, or (None or `networks`) the shipped `networks.toml`."""
    return find_file(NETWORKS if name_or_path is None else name_or_path, PROTOCOLS, "network profiles", [NETWORKS])


def recipe_file(name_or_path: str | os.PathLike, what: str = "recipe") -> Path:
    """A recipe or matrix file: a TOML path, or a shipped name such as `cpu` or `paper-variants`."""
    return find_file(name_or_path, RECIPES, what)


__all__ = [
    "DEFAULT_PROTOCOL",
    "find_file",
    "networks_file",
    "protocol_file",
    "recipe_file",
    "shipped_dir",
    "shipped_names",
]
