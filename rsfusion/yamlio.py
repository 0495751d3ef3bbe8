"""YAML reading and writing shared by configs and dataset cards.

Numbers follow YAML 1.2: no '_' digit separators (Potsdam tile ``2_10`` stays a string), no
sexagesimal (``6:7``) or leading-zero octal ints, and ``1e-3`` is a float.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

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


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`Loader`."""
    return yaml.load(text, Loader=Loader)
