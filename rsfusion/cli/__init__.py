"""Command-line entry points (mirrored by scripts/)."""

import logging
import sys

from rsfusion.errors import UserError

#: What every command-line tool prints as one ``error:`` line (rsfusion's user errors, and a
#: missing file the operating system reports); anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def show_messages() -> None:
    """Print the library's progress messages (rsfusion loggers at INFO: weights loaded,
    per-class tables) on stdout, as plain lines; a handler set up by the caller is kept."""
    logger = logging.getLogger("rsfusion")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
