"""rsfusion: multimodal (RGB+X) semantic segmentation on one dual-stream engine.

The two calls a notebook needs most are importable from here, loaded on first use (so that
``import rsfusion`` stays light): :func:`rsfusion.predict` (what ``scripts/predict.py`` does:
:func:`rsfusion.inference.api.predict`) and :func:`rsfusion.evaluate` (what
``scripts/evaluate.py`` does: :func:`rsfusion.evaluation.api.evaluate`), with
:class:`rsfusion.Predictor` to load a checkpoint once and predict many times.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: name -> the module it comes from, imported when the name is first used
_LAZY = {
    "EvalOptions": "rsfusion.evaluation.protocol",
    "Predictor": "rsfusion.inference.api",
    "evaluate": "rsfusion.evaluation.api",
    "predict": "rsfusion.inference.api",
}

__all__ = ["EvalOptions", "Predictor", "__version__", "evaluate", "predict"]

TYPE_CHECKING = False  # typing itself is not imported: ``import rsfusion`` stays light
if TYPE_CHECKING:
    from typing import Any

    from rsfusion.evaluation.api import evaluate
    from rsfusion.evaluation.protocol import EvalOptions
    from rsfusion.inference.api import Predictor, predict


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rsfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
