"""YAML reading and writing shared by configs, dataset cards and label spaces.

Every YAML file of the package is read here, with a safe loader: plain data only (mappings,
lists, strings, numbers, booleans, null). A ``!!python/...`` or other unknown tag is refused as
a user error naming the file, never constructed. Numbers follow YAML 1.2: no '_' digit
separators (Potsdam tile ``2_10`` stays a string), no sexagesimal (``6:7``) or leading-zero
octal ints, and ``1e-3`` is a float.

Example:
    >>> load_yaml("{tiles: [1, 2_10], lr: 1e-3}")
    {'tiles': [1, '2_10'], 'lr': 0.001}
    >>> load_yaml("run: !!python/name:os.system", "x.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rsfusion.errors.ConfigError: x.yaml (line 1, column 6): the YAML tag !!python/name:os... remove the tag
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rsfusion.errors import ConfigError, MissingFileError

_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# YAML 1.2-like numbers: no '_' digit separators (Potsdam tile 2_10 stays a string), no
# sexagesimal (6:7) or leading-zero octal ints (01 stays a string), and 1e-3 is a float.
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class Loader(yaml.SafeLoader):
    """SafeLoader whose ints and floats follow YAML 1.2 (see ``_INT_RE`` and ``_FLOAT_RE``)."""


class Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings ``Loader`` would read as numbers."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _cls in (Loader, Dumper):
    _cls.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
    _cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def load_yaml(text: str, source: str = "YAML text") -> Any:
    """Parse YAML text with :class:`Loader` (plain data only).

    Raises:
        ConfigError: invalid YAML, or a tag that would construct an object; one line naming
            ``source``, the line and column.
    """
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_problem(err, source)) from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse a YAML file (see :func:`load_yaml`); ``what`` names it in messages.

    Raises:
        MissingFileError: no such file.
        ConfigError: the file cannot be read, is not UTF-8 text, or is not plain-data YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    return load_yaml(text, f"{what} {path}")


def yaml_problem(err: yaml.YAMLError, source: str) -> str:
    """One line for a YAML error: the source, line and column, and what is wrong."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(err, "problem", None) or (str(err).strip().splitlines() or ["?"])[0]
    tag = re.search(r"for the tag '(?:tag:yaml\.org,2002:)?([^']*)'", problem)
    if isinstance(err, yaml.constructor.ConstructorError) and tag:
        shown = f"!!{tag[1]}" if problem.find("tag:yaml.org,2002:") >= 0 else tag[1]
        return (
            f"{source}{where}: the YAML tag {shown} is not allowed (it would construct a Python "
            "object); these files hold plain data only (mappings, lists, strings, numbers): "
            "remove the tag"
        )
    context = getattr(err, "context", None)
    return f"invalid YAML in {source}{where}: {f'{context}, ' if context else ''}{problem}"
