"""One registry: name -> builder, a dict and a decorator per kind (models now; more later)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

MODELS: dict[str, Callable] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Register a model builder under ``name`` (the config's ``model.name``)."""

    def wrap(fn: F) -> F:
        if name in MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        MODELS[name] = fn
        return fn

    return wrap


def get_model_builder(name: str) -> Callable:
    """The builder registered as ``name``; an unknown name lists the known ones."""
    import rsfusion.models  # noqa: F401  (registers the built-in models)

    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown model '{name}' (known: {sorted(MODELS)}){hint}")
    return MODELS[name]
