"""rsfusion's exception family (bottom layer: every package module may import it).

:class:`RsfusionError` is the root. :class:`UserError` marks problems a user fixes (a value, a
file, an option); its message names the file or option, the value and the fix, and the
command-line tools catch it once and print it as one ``error:`` line. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "BlockSplitError",
    "CheckpointMismatchError",
    "ConfigError",
    "EncodingError",
    "LabelColourError",
    "MatFileError",
    "MissingFileError",
    "PairingError",
    "PredictionError",
    "RsfusionError",
    "SampleFileError",
    "SampleFormatError",
    "TileError",
    "UnknownNameError",
    "UserError",
    "WeightsError",
    "WeightsUnavailable",
]


class RsfusionError(Exception):
    """Root of rsfusion's exceptions."""


class UserError(RsfusionError, ValueError):
    """A problem the user fixes: the message names the file or option, the value and the fix."""


class UnknownNameError(UserError, KeyError):
    """A name (dataset card, modality, encoding, split, condition, model) that does not exist;
    the message lists the choices. Also a ``KeyError``, printed without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a config points at) does not exist."""


# ---------------------------------------------------------------- config and data
class ConfigError(UserError):
    """A config problem; the message names the file or override, the key path and the fix."""


class TileError(UserError):
    """A tile's files are missing, unreadable or do not fit together."""


class LabelColourError(UserError):
    """A label raster holds a colour that is not in the dataset card's palette."""


class SampleFileError(UserError, FileNotFoundError):
    """A file a sample needs is missing (the message names it and what it was for)."""


class SampleFormatError(UserError):
    """A sample file that cannot be read, or does not fit the card (the message names it)."""


class MatFileError(UserError):
    """A MAT-file that cannot be read as numeric arrays (the message names the file)."""


class EncodingError(UserError):
    """A stored file that an encoding cannot turn into channels (names file and op)."""


# ---------------------------------------------------------------- models and checkpoints
class WeightsError(UserError):
    """Pre-trained weights were asked for (``model.weights``) and cannot be had or do not fit."""


class WeightsUnavailable(RsfusionError, FileNotFoundError):
    """No weights file can be had for a source (missing path, or a hub name while offline);
    the backbone factory turns it into a warning or a :class:`WeightsError`."""


class BlockSplitError(UserError, NotImplementedError):
    """A backbone cannot split its blocks into token-mixer and MLP halves (or cannot run them
    with extra prompt tokens), which a recipe's block-level parts need."""


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the config or model it is used with."""


# ---------------------------------------------------------------- prediction
class PredictionError(UserError):
    """Inputs or checkpoint unfit for prediction; the message names the file and the fix."""


class PairingError(UserError):
    """Inputs that cannot be paired; the message lists the files and the fix."""


# ---------------------------------------------------------------- non-finite values
class NonFiniteError(UserError):
    """NaN or inf where finite numbers are needed: a training loss, a checkpoint's weights; the
    message names the step or file and what to check (the data, ``optim.lr``)."""


__all__ += ["NonFiniteError"]


# ---------------------------------------------------------------- export
class ExportError(UserError):
    """A model that cannot be exported as asked (an exporter or opset that lacks an operator,
    ONNX Runtime logits that differ from PyTorch's); the message says what to try."""


__all__ += ["ExportError"]
