"""``python scripts/install_qgis_plugin.py [--profile-dir DIR] [--python PATH]``.

Copies rsfusion's QGIS plugin into a QGIS profile as ``python/plugins/rsfusion`` (replacing an
earlier copy), records the rsfusion environment's Python beside it (``rsfusion_env.json``) and
enables it in the profile's ``QGIS/QGIS3.ini`` (``[PythonPlugins] rsfusion=true``). Restart QGIS
afterwards: the ``rsfusion`` provider is then in the Processing Toolbox and in ``qgis_process``.
The Python defaults to this repository's ``.venv`` (made by scripts/setup_env.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rsfusion import __version__
from rsfusion.errors import MissingFileError, UserError

__all__ = ["default_profile_dir", "enable_plugin", "enabled_ini", "install", "main"]

PLUGIN = "rsfusion"
SOURCE = Path(__file__).resolve().parents[1] / "qgis_plugin"
REPO = SOURCE.parents[1]
_SKIP = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "conftest.py", "picture.py", "rsfusion_env.json"
)


def default_profile_dir() -> Path:
    """The default QGIS 3 profile of this user, on this platform."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def _default_python() -> Path:
    venv = REPO / ".venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    return venv if venv.is_file() else Path(sys.executable)


def check_python(python: Path) -> None:
    """Refuse a Python that cannot run the prediction (no rsfusion or no torch)."""
    if not python.is_file():
        raise MissingFileError(
            f"--python {python}: no such file; run scripts/setup_env.sh first or pass the "
            "Python of the rsfusion environment"
        )
    probe = "import rsfusion.cli.predict"
    try:
        done = subprocess.run(
            [str(python), "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"--python {python}: cannot run it ({err})") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"--python {python} cannot import rsfusion's prediction ({last}); run "
            "scripts/setup_env.sh and pass its .venv's Python"
        )


def enabled_ini(text: str, name: str = PLUGIN) -> str:
    r"""A QGIS settings file's text with ``[PythonPlugins] NAME=true``, every other line kept.

    Example:
        >>> text = "[PythonPlugins]\nrsfusion=false\nother=true\n[qgis]\nx=1\n"
        >>> enabled_ini(text).splitlines()[:3]
        ['[PythonPlugins]', 'rsfusion=true', 'other=true']
        >>> enabled_ini("[qgis]\nx=1\n").splitlines()
        ['[qgis]', 'x=1', '', '[PythonPlugins]', 'rsfusion=true']
    """
    section, done, out = None, False, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "[PythonPlugins]" and not done:
                out.append(f"{name}=true")
                done = True
            section = stripped
        elif section == "[PythonPlugins]" and stripped.split("=", 1)[0].strip() == name:
            if not done:
                out.append(f"{name}=true")
                done = True
            continue
        out.append(line)
    if not done:
        if section != "[PythonPlugins]":
            out += ([""] if out and out[-1].strip() else []) + ["[PythonPlugins]"]
        out.append(f"{name}=true")
    return "\n".join(out) + "\n"


def enable_plugin(ini: Path, name: str = PLUGIN) -> None:
    """Enable plugin ``name`` in a QGIS settings file (``QGIS/QGIS3.ini`` of a profile), as
    ``qgis_process plugins enable`` does; the file is replaced atomically."""
    text = ini.read_text(encoding="utf-8") if ini.is_file() else ""
    _write_atomic(ini, enabled_ini(text, name))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(profile_dir: Path, python: Path) -> Path:
    """Copy the plugin into ``profile_dir`` and enable it; the plugin's folder is returned."""
    plugins = profile_dir / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    target = plugins / PLUGIN
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN}.", dir=plugins))
    try:
        copy = staging / PLUGIN
        shutil.copytree(SOURCE, copy, ignore=_SKIP)
        record = {
            "python": str(python),
            "repo": str(REPO),
            "version": __version__,
            "installed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (copy / "rsfusion_env.json").write_text(json.dumps(record, indent=2) + "\n")
        old = plugins / f".{PLUGIN}.old"
        if old.exists() or old.is_symlink():
            _remove(old)
        if target.exists() or target.is_symlink():
            target.rename(old)
        copy.rename(target)
        if old.exists() or old.is_symlink():
            _remove(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    enable_plugin(profile_dir / "QGIS" / "QGIS3.ini")
    return target


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfusion-install-qgis-plugin", description=__doc__)
    p.add_argument(
        "--profile-dir", type=Path, default=None,
        help=f"QGIS profile folder (default: {default_profile_dir()})",
    )  # fmt: skip
    p.add_argument(
        "--python", type=Path, default=None,
        help="Python of the rsfusion environment the plugin runs the prediction with "
        f"(default: {_default_python()})",
    )  # fmt: skip
    p.add_argument(
        "--no-check", action="store_true",
        help="do not check that the Python imports rsfusion's prediction",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = (args.profile_dir or default_profile_dir()).expanduser()
    python = Path(os.path.abspath((args.python or _default_python()).expanduser()))
    try:
        if not args.no_check:
            check_python(python)
        target = install(profile, python)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"installed the rsfusion QGIS plugin in {target}")
    print(f"enabled in {profile / 'QGIS' / 'QGIS3.ini'}; prediction runs with {python}")
    print("restart QGIS: Processing Toolbox > rsfusion > Predict (RGB + X rasters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
