"""Where the shipped configs/ and data_catalog/ folders are, from any working directory.

A wheel carries them inside the package (``rsfusion/_resources/``); a source checkout or an
editable install finds them beside the package at the repository root.
"""

from __future__ import annotations

from pathlib import Path

from rsfusion.errors import MissingFileError

_PKG = Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    for candidate in (_PKG / "_resources" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise MissingFileError(
        f"rsfusion cannot find its '{name}/' folder (looked in {_PKG / '_resources'} and "
        f"{_PKG.parent}); reinstall the package with `pip install .`"
    )


def configs_dir() -> Path:
    """The folder holding the shipped experiment configs."""
    return _resource_dir("configs")


def catalog_dir() -> Path:
    """The folder holding the shipped dataset cards."""
    return _resource_dir("data_catalog")
