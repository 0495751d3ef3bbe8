"""Command-line entry points (mirrored by scripts/)."""

from rsfusion.errors import UserError

#: What every command-line tool prints as one ``error:`` line (rsfusion's user errors, and a
#: missing file the operating system reports); anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
