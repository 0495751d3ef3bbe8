"""Where the rsfusion environment's Python is (standard library only).

QGIS's Python cannot import torch, so the plugin runs the prediction with the Python of the
environment ``scripts/setup_env.sh`` made (the repository's ``.venv``). It is looked for, first
found wins:

1. the environment variable ``RSFUSION_PYTHON``;
2. the provider's setting (Settings > Options > Processing > Providers > rsfusion);
3. ``rsfusion_env.json`` beside the plugin, written by ``scripts/install_qgis_plugin.py``;
4. ``.venv`` of the repository the plugin sits in (when QGIS loads it from a checkout).

Example:
    >>> venv_python("/repo/.venv").as_posix().endswith((".venv/bin/python", "python.exe"))
    True
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_FILE", "ENV_VAR", "EnvironmentNotFound", "RsfusionEnv", "find_env", "venv_python"]

#: the environment variable that names the Python to run the prediction with
ENV_VAR = "RSFUSION_PYTHON"
#: the file beside the plugin where the installer records the Python and the repository
ENV_FILE = "rsfusion_env.json"
HERE = Path(__file__).resolve().parent
_FIX = (
    "run `python scripts/install_qgis_plugin.py` in the rsfusion repository (after "
    "scripts/setup_env.sh), set RSFUSION_PYTHON, or set the Python in Settings > Options > "
    "Processing > Providers > rsfusion"
)


class EnvironmentNotFound(Exception):
    """No usable Python of the rsfusion environment (the message says where it looked)."""


@dataclass(frozen=True)
class RsfusionEnv:
    """The Python to run the prediction with, the repository (its working directory, or
    ``None``) and where the Python was found (for the log)."""

    python: str
    repo: str | None
    source: str


def venv_python(venv: str | Path) -> Path:
    """The Python of a virtual environment folder, on this platform."""
    venv = Path(venv)
    if sys.platform == "win32":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _recorded(plugin_dir: Path) -> dict[str, str]:
    path = plugin_dir / ENV_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise EnvironmentNotFound(f"{path} cannot be read ({err}): {_FIX}") from err
    return (
        {k: str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    )


def _checkout(plugin_dir: Path) -> Path | None:
    """The repository when the plugin is rsfusion/qgis_plugin of a checkout."""
    repo = plugin_dir.parent.parent
    if plugin_dir.parent.name == "rsfusion" and (repo / "pyproject.toml").is_file():
        return repo
    return None


def find_env(
    setting: str | None = None,
    plugin_dir: str | Path = HERE,
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> RsfusionEnv:
    """The rsfusion environment to run the prediction in (see the module's list).

    A Python that is named (by the variable, the setting or the record) but does not exist is
    an error, not a reason to look further: the user meant that one.
    """
    environ = os.environ if environ is None else environ
    plugin_dir = Path(plugin_dir)
    recorded = _recorded(plugin_dir)
    repo = recorded.get("repo") or (str(_checkout(plugin_dir) or "") or None)
    named = [
        (environ.get(ENV_VAR, ""), f"the environment variable {ENV_VAR}"),
        (setting or "", "the rsfusion provider's Python setting"),
        (recorded.get("python", ""), str(plugin_dir / ENV_FILE)),
    ]
    for python, source in named:
        if python.strip():
            path = Path(python.strip()).expanduser()
            if not path.is_file():
                raise EnvironmentNotFound(f"{source} names {path}, which does not exist: {_FIX}")
            return RsfusionEnv(str(path), repo if repo and Path(repo).is_dir() else None, source)
    checkout = _checkout(plugin_dir)
    if checkout is not None and venv_python(checkout / ".venv").is_file():
        python = venv_python(checkout / ".venv")
        return RsfusionEnv(str(python), str(checkout), f"the checkout's {python}")
    raise EnvironmentNotFound(f"no Python of the rsfusion environment found: {_FIX}")
