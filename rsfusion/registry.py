"""One registry: name -> builder, a dict and a decorator per kind (models now; more later)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

from rsfusion.errors import UnknownNameError

F = TypeVar("F", bound=Callable)

MODELS: dict[str, Callable] = {}
#: name -> ``options(arch)``: the callable whose keyword parameters ``model.kwargs`` may set
#: (a recipe class, an smp architecture), the parameters the builder sets itself, and extra keys.
MODEL_OPTIONS: dict[str, ModelOptions] = {}


class ModelOptions:
    """What ``model.kwargs`` of a registered model may hold, checked at config load.

    Args:
        target: ``target(arch)`` returns the callable whose keyword parameters (with their type
            hints) are the options: a recipe class, an smp architecture class.
        fixed: parameters the builder sets itself (refused in kwargs).
        extra: further keys and their types (``backbone_kwargs: dict``).
    """

    def __init__(
        self,
        target: Callable[[str], Callable | None],
        fixed: tuple[str, ...] = (),
        extra: dict[str, object] | None = None,
    ) -> None:
        self.target, self.fixed, self.extra = target, fixed, dict(extra or {})

    def parameters(self, arch: str) -> dict[str, object] | None:
        """Option name -> type hint (``typing.Any`` where none); None when unknown for ``arch``."""
        import inspect
        import typing

        fn = self.target(arch)
        if fn is None:
            return None
        init = fn.__init__ if isinstance(fn, type) else fn
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an unresolvable annotation: check names only
            hints = {}
        out: dict[str, object] = {}
        for name, p in inspect.signature(init).parameters.items():
            if p.kind is p.VAR_KEYWORD:
                return None  # takes anything: nothing to check
            if p.default is p.empty or name in self.fixed or name == "self":
                continue
            out[name] = hints.get(name, typing.Any)
        return {**out, **self.extra}


def register_model(name: str, options: ModelOptions | None = None) -> Callable[[F], F]:
    """Register a model builder under ``name`` (the config's ``model.name``), with the options
    its ``model.kwargs`` may set."""

    def wrap(fn: F) -> F:
        if name in MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        MODELS[name] = fn
        if options is not None:
            MODEL_OPTIONS[name] = options
        return fn

    return wrap


def model_options(name: str, arch: str) -> dict[str, object] | None:
    """The options ``model.kwargs`` of model ``name`` may set (None: not checked)."""
    get_model_builder(name)
    options = MODEL_OPTIONS.get(name)
    return None if options is None else options.parameters(arch)


def get_model_builder(name: str) -> Callable:
    """The builder registered as ``name``; an unknown name lists the known ones."""
    import rsfusion.models  # noqa: F401  (registers the built-in models)

    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(f"unknown model '{name}' (known: {sorted(MODELS)}){hint}")
    return MODELS[name]
