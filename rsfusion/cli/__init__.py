"""Command-line entry points (mirrored by scripts/)."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from rsfusion.errors import ConfigError, UserError

#: What every command-line tool prints as one ``error:`` line (rsfusion's user errors, and a
#: missing file the operating system reports); anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


class _StdoutHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stdout`` is at each message (a stream
    replaced since, e.g. by an embedding application or pytest's capture, is followed)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def show_messages() -> None:
    """Print the library's progress messages (rsfusion loggers at INFO: weights loaded,
    per-class tables) on stdout, as plain lines; a handler set up by the caller is kept."""
    logger = logging.getLogger("rsfusion")
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be made or written to: an
    existing file, a broken link, a path under a file, a read-only place. Nothing is created
    (a writable folder is probed with a temporary folder, removed at once).

    Raises:
        ConfigError: naming ``flag``, the path and the fix.

    Example:
        >>> check_out_folder(getfixture("tmp_path") / "runs" / "a")  # may be made: fine
        >>> check_out_folder(__file__)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        rsfusion.errors.ConfigError: --out ...__init__.py is an existing file, not a folder: ...
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{flag} {path} is an existing file, not a folder: give a folder path (it is "
            "made if missing)"
        )
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{flag} {path} is a link to nothing: remove it or give another folder")
    base = path.absolute()
    while not base.exists() and not base.is_symlink():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(
            f"{flag} {path}: {base} is a file (or a broken link), so no folder can be made "
            "under it; give another folder"
        )
    try:
        Path(tempfile.mkdtemp(prefix=".rsfusion-probe-", dir=base)).rmdir()
    except OSError as err:
        raise ConfigError(
            f"{flag} {path}: cannot write in {base} ({err.strerror or err}); give a folder you "
            "can write to"
        ) from None


def make_folder(path: str | Path, flag: str = "--out") -> Path:
    """Make an output folder (and its parents); an OS refusal is a :class:`ConfigError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{flag} {path}: cannot make the folder ({err.strerror or err}); give a folder you "
            "can write to"
        ) from None
    return path
