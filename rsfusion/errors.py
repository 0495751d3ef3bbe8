"""rsfusion's exception family (bottom layer: every package module may import it).

:class:`RsfusionError` is the root. :class:`UserError` marks problems a user fixes (a value, a
file, an option); its message names the file or option, the value and the fix, and the
command-line tools print it as one ``error:`` line.
"""

from __future__ import annotations

__all__ = ["BlockSplitError", "RsfusionError", "UserError", "WeightsError"]


class RsfusionError(Exception):
    """Root of rsfusion's exceptions."""


class UserError(RsfusionError, ValueError):
    """A problem the user fixes: the message names the file or option, the value and the fix."""


class BlockSplitError(UserError, NotImplementedError):
    """A backbone cannot split its blocks into token-mixer and MLP halves (or cannot run them
    with extra prompt tokens), which a recipe's block-level parts need."""


class WeightsError(UserError):
    """Pre-trained weights were asked for (``model.weights``) and cannot be had or do not fit."""
