"""Experiment configs: YAML files (with ``base:`` inheritance and ``--set`` overrides) validated
once, at load, into the plain typed dataclasses of :mod:`rsfusion.config_schema`.

Example:
    >>> cfg = load_config("vaihingen_baseline", ["trainer.max_steps=3"])  # doctest: +SKIP
    >>> cfg.data.window, cfg.trainer["max_steps"]  # doctest: +SKIP
    (256, 3)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import tempfile
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from rsfusion.config_schema import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    KeyPath,
    ModelConfig,
    OptimConfig,
    TypeMismatch,
    build,
    convert,
    dotted,
    type_error,
    unknown_key,
)
from rsfusion.paths import configs_dir
from rsfusion.yamlio import Dumper as _Dumper
from rsfusion.yamlio import load_yaml, read_yaml

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimConfig",
    "config_to_dict",
    "load_config",
    "resolve_config_path",
    "save_config",
]

_SUFFIXES = (".yaml", ".yml")


def _show(path: Path) -> str:
    """A file name for messages: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _lookup(ref: str | Path, folders: Sequence[Path]) -> Path | None:
    """The first file ``ref`` (as given, or plus .yaml/.yml) in ``folders``; None if none."""
    ref = Path(ref).expanduser()
    for folder in folders:
        base = folder / ref
        names = (
            [base]
            if base.suffix in _SUFFIXES
            else [base, *(base.with_name(base.name + s) for s in _SUFFIXES)]
        )
        for cand in names:
            if cand.is_file():
                return cand.resolve()
    return None


def _configs_folder(ref: str | Path) -> Path:
    try:
        return configs_dir()
    except FileNotFoundError as err:
        raise ConfigError(f"config '{ref}' not found: {err}") from err


def _not_found(ref: str | Path, looked: str, folders: Sequence[Path]) -> str:
    """A 'not found' message suggesting the closest config names in ``folders``."""
    names = sorted(
        {p.stem for f in folders if f.is_dir() for p in f.iterdir() if p.suffix in _SUFFIXES}
    )
    close = difflib.get_close_matches(Path(ref).stem, names, n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"available: {names}"
    return f"config '{ref}' not found {looked}; {hint}"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Find a config: an existing file path, else a name (with or without .yaml) in configs/.

    Raises:
        ConfigError: if nothing matches; the message suggests the closest config names.
    """
    found = _lookup(name_or_path, [Path.cwd()])
    if found is None:
        folder = _configs_folder(name_or_path)
        found = _lookup(name_or_path, [folder])
        if found is None:
            raise ConfigError(
                _not_found(name_or_path, f"as a file nor in {_show(folder)}", [folder])
            )
    return found


# ---------------------------------------------------------------- reading, inheritance, overrides
Origins = dict[KeyPath, str]


def _all_paths(data: Mapping[Any, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    out: list[KeyPath] = []
    for key, value in data.items():
        out.append((*prefix, key))
        if isinstance(value, Mapping):
            out += _all_paths(value, (*prefix, key))
    return out


def _merge(dst: dict, dst_o: Origins, src: Mapping, src_o: Origins, prefix: KeyPath = ()) -> None:
    """Deep-merge ``src`` into ``dst`` (dicts recursively; lists and scalars replaced)."""
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], dst_o, value, src_o, path)
            continue
        dst[key] = copy.deepcopy(value)
        n = len(path)
        for old in [p for p in dst_o if p[:n] == path]:
            del dst_o[old]
        dst_o.update({p: w for p, w in src_o.items() if p[:n] == path})


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(_show(path), "config")  # plain data only: a !!python tag is refused
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_show(path)} must hold a mapping of keys (seed, data, model, ...), "
            f"got {type(data).__name__}"
        )
    return data


def _resolve_base(ref: str, including: Path) -> Path:
    """A ``base:`` entry: beside the including file first, then in configs/."""
    folders = [including.parent, _configs_folder(ref)]
    found = _lookup(ref, folders)
    if found is None:
        looked = f"beside {_show(including)} nor in {_show(folders[1])}"
        raise ConfigError(f"base of {_show(including)}: {_not_found(ref, looked, folders)}")
    return found


def _load_tree(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Origins]:
    """Read ``path`` with its bases merged under it; returns the data and each key's file."""
    raw = _read_yaml(path)
    refs = raw.pop("base", None)
    refs = [] if refs is None else [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(
            f"base in {_show(path)} must be a file name or a list of file names, got {refs!r}"
        )
    data: dict[str, Any] = {}
    origins: Origins = {}
    for ref in refs:
        base = _resolve_base(ref, path)
        if base in chain or base == path:
            cycle = " -> ".join(_show(p) for p in (*chain, path, base))
            raise ConfigError(f"base cycle: {cycle}; remove one of these 'base:' entries")
        base_data, base_origins = _load_tree(base, (*chain, path))
        _merge(data, origins, base_data, base_origins)
    where = _show(path)
    _merge(data, origins, raw, {p: where for p in _all_paths(raw)})
    return data, origins


def _apply_override(data: dict[str, Any], origins: Origins, text: str) -> None:
    """Apply one ``a.b=value`` override; the value is read as YAML (``[1, 3]``, ``null``, ...).

    A mapping value is deep-merged like a config file's; any other value replaces the old one.
    """
    key, sep, raw_value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(
            f"malformed override '{text}': expected key.path=value, e.g. data.window=512"
        )
    if parts == ["base"]:
        raise ConfigError(f"override '{text}': 'base' can only be set inside a config file")
    value = load_yaml(raw_value, f"the value of override '{text}'")
    node, where = data, f"override '{text}'"
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}  # absent, or an empty YAML section
            origins[tuple(parts[: i + 1])] = where
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(
                f"override '{text}': '{'.'.join(parts[: i + 1])}' is not a mapping, "
                f"so it has no key '{parts[i + 1]}'"
            )
    _merge(node, origins, {parts[-1]: value}, {}, tuple(parts[:-1]))
    path = tuple(parts)
    origins[path] = where
    if isinstance(value, Mapping):
        origins.update({(*path, *p): where for p in _all_paths(value)})


@functools.cache
def _trainer_params() -> dict[str, Any]:
    """``lightning.Trainer.__init__`` arguments and their type hints (lightning imported here)."""
    import inspect

    import lightning

    init = lightning.Trainer.__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an unresolvable annotation: fall back to the raw ones
        hints = {}
    params = inspect.signature(init).parameters
    return {n: hints.get(n, p.annotation) for n, p in params.items() if n != "self"}


def _cheap_check(tp: Any) -> bool:
    """Whether ``tp`` is built only from int/float/bool/str/None/Literal (checked, not converted)."""
    arms = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    return all(a in (int, float, bool, str, type(None)) or get_origin(a) is Literal for a in arms)


def _check_value(tp: Any, value: Any, path: KeyPath, where: Callable[[KeyPath], str]) -> None:
    """``value`` is a ``tp`` (see :func:`convert`) and, if a float, finite (never NaN or inf)."""
    number = convert(tp, value, path, where)
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(
            f"{dotted(path)}: must be a finite number, got {number} (in {where(path)})"
        )


def _check_trainer(trainer: Mapping[str, Any], where: Callable[[KeyPath], str]) -> None:
    params = _trainer_params()
    for key, value in trainer.items():
        path = ("trainer", key)
        if key not in params:
            raise unknown_key(path, list(params), where(path), "lightning.Trainer argument")
        if _cheap_check(params[key]):
            _check_value(params[key], value, path, where)


def _check_model(model: ModelConfig, where: Callable[[KeyPath], str]) -> None:
    """``model.name`` is registered and ``model.kwargs`` are options it takes, of their types
    (closed sets of strings included); the closest valid name or value is suggested."""
    from rsfusion.registry import MODELS, model_options

    try:
        params = model_options(model.name, model.arch)
    except KeyError:
        close = difflib.get_close_matches(model.name, list(MODELS), n=1)
        fix = f"did you mean '{close[0]}'?" if close else f"registered: {', '.join(MODELS)}"
        raise ConfigError(
            f"model.name: unknown model '{model.name}' (in {where(('model', 'name'))}); {fix}"
        ) from None
    if params is None:
        return
    for key, value in model.kwargs.items():
        path = ("model", "kwargs", key)
        if key not in params:
            raise unknown_key(path, list(params), where(path), f"option of {model.name}")
        if _cheap_check(params[key]):
            _check_value(params[key], value, path, where)


# ---------------------------------------------------------------- public API
def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load, merge (``base:``), override (``a.b=v``) and validate an experiment config.

    Args:
        name_or_path: a config name in configs/ (``vaihingen_baseline``) or a YAML file path.
        overrides: ``key.path=value`` strings applied after inheritance, values read as YAML.

    Returns:
        The validated config; ``name`` is the file's stem.

    Raises:
        ConfigError: naming the file or override, the key path and the fix.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    path = resolve_config_path(name_or_path)
    data, origins = _load_tree(path, ())
    for text in overrides:
        _apply_override(data, origins, text)

    def where(key_path: KeyPath) -> str:
        for n in range(len(key_path), 0, -1):
            if key_path[:n] in origins:
                return origins[key_path[:n]]
        return _show(path)

    try:
        cfg = build(ExperimentConfig, data, (), where, name=path.stem)
        if cfg.trainer:
            _check_trainer(cfg.trainer, where)
        _check_model(cfg.model, where)
    except TypeMismatch as err:
        raise type_error(err, where(err.path)) from None
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (YAML- and hparams-friendly), with ``name``."""
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: a temporary file, then a rename).

    ``name`` is written as a comment only, since it comes from the file name when loaded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    name = data.pop("name")
    text = f"# rsfusion experiment config '{name}', resolved (bases and overrides applied)\n"
    text += yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
