"""The experiment config schema: plain typed dataclasses, and the generic validator that fills
them from YAML data by their type hints (``typing.get_type_hints``), so a new field needs no new
check. Reading files, inheritance and overrides live in :mod:`rsfusion.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from rsfusion.errors import ConfigError


class IntAsStr:
    """Marker in ``Annotated[str, IntAsStr]``: a YAML int is accepted and converted to ``str``."""


TileId = Annotated[str, IntAsStr]
"""A tile id: always a string ("1", "2_10"); YAML ints such as ``[1, 3]`` are converted."""


@dataclass
class AugmentConfig:
    """Training augmentation (geometric on RGB, X and mask; colour jitter on RGB only)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = False
    scale: list[float] | None = None
    color_jitter: float = 0.0
    gaussian_blur: float = 0.0  # probability of a 3x3 Gaussian blur of the RGB (SegRGB-X)


@dataclass
class DataConfig:
    """Which dataset card, modalities, tiles, labels, windows and normalisation to use."""

    card: str = "vaihingen"
    root: str | None = None
    rgb: str = "rgb"
    x: str | None = "dsm"
    split: str | None = None
    train_tiles: list[TileId] | None = None
    val_tiles: list[TileId] | None = None
    test_tiles: list[TileId] | None = None
    labels: Literal["full", "eroded"] = "full"
    eval_labels: Literal["full", "eroded"] = "eroded"
    window: int = 256
    eval_stride: int | None = None
    batch_size: int = 8
    eval_batch_size: int | None = None
    # data-loading workers; "auto": from this machine's CPUs, with the results of 0 workers
    num_workers: int | Literal["auto"] = 0
    samples_per_epoch: int = 1000
    rgb_norm: Literal["imagenet", "unit", "tf"] = "imagenet"
    x_norm: Literal["raster_minmax", "dataset", "scale"] = "raster_minmax"
    x_scale: float = 1.0
    align_x: bool = False
    # ISPRS: each split's rasters read once into memory ("auto": when they fit in a quarter of
    # the memory available); samples and results are the same either way
    in_memory: bool | Literal["auto"] = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # natural-image cards only (kind: natural); the defaults leave ISPRS configs unchanged
    x_encoding: str | None = None  # the X modality's encoding in the card (null: its default)
    condition: str | None = None  # a card condition/subset (null: all samples)
    resize: list[int] | None = None  # [h, w] every sample is resized to on the CPU
    scale_range: list[float] | None = None  # training: random CPU rescale before the crop
    crop: list[int] | None = None  # training: random [h, w] CPU crop (padded with ignore)
    crop_cat_max: float = 1.0  # with crop: redraw (10 tries) where one class covers more (CPAL .75)
    pad_multiple: int = 32  # batches padded to a multiple of this (mask: ignore)
    # evaluate.py's test-time augmentation (null: the method's published protocol, else none)
    eval_scales: list[float] | None = None
    eval_flip: bool | None = None
    # generalist training (SegRGB-X): source name -> overrides of this section's fields (and
    # ``ratio``, the source's share of training batches); see :func:`joint_overrides`
    joint: dict[str, dict[str, Any]] | None = None
    label_space: str | None = None  # unified label-space YAML (null: the shipped unified.yaml)


@dataclass
class MaskingSection:
    """Train-time modality masking: MCRM rectangles (MoBaNet) or whole-modality MMST (KTB)."""

    mode: Literal["none", "mcrm", "mmst"] = "none"
    fraction: float = 0.25
    area: list[float] = field(default_factory=lambda: [0.1, 0.3])
    aspect: list[float] = field(default_factory=lambda: [0.5, 2.0])
    where: Literal["input", "tokens"] = "input"
    shape: Literal["rect", "squares"] = "rect"  # MCRM holes: rectangles or squares
    count: int = 1  # MCRM holes per masked image


@dataclass
class AuxLossSection:
    """Auxiliary heads' supervision: on the pixels the main head got wrong ("hard", MoBaNet)
    or right ("self_teaching", KTB), with the given weight."""

    mode: Literal["none", "hard", "self_teaching"] = "none"
    weight: float = 0.01


@dataclass
class ModelConfig:
    """Which recipe, architecture and backbone to build, with extra keyword arguments."""

    name: str = "early_fusion"
    arch: str = "Unet"
    backbone: str = "resnet18"
    weights: str | None = None
    weights_required: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    # dual-stream engine models: frozen (eval), stochastic_depth (frozen weights and BatchNorm
    # statistics, drop-path on in training), trainable (own LR: optim.backbone_lr)
    backbone_mode: Literal["frozen", "stochastic_depth", "trainable"] = "frozen"
    drop_path_rate: float | None = None  # the backbone's stochastic depth (null: its default)
    masking: MaskingSection = field(default_factory=MaskingSection)
    aux_loss: AuxLossSection = field(default_factory=AuxLossSection)
    # training compiles the model's forward with torch.compile (GPUs; evaluation stays eager)
    compile: bool = False


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warmup, then poly or cosine decay)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: Literal["none", "poly", "cosine"] = "poly"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    total_steps: int | None = None
    layer_decay: float | None = None
    backbone_lr: float | None = None  # a trainable backbone's LR (null: lr)
    power: float = 0.9
    min_lr: float = 0.0


@dataclass
class ExperimentConfig:
    """One experiment: data, model, optimiser and ``lightning.Trainer`` keyword arguments.

    ``name`` comes from the config file's stem and may not be set in YAML.
    """

    name: str = field(metadata={"from_yaml": False})
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)


KeyPath = tuple[str | int, ...]

JOINT_ONLY = ("joint", "label_space")
"""``data`` keys set once for all sources of a joint run, never under ``data.joint.<source>``."""


def dotted(path: KeyPath) -> str:
    """``("data", "train_tiles", 0)`` -> ``data.train_tiles[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------- generic validation
class TypeMismatch(Exception):
    """Internal: ``value`` at ``path`` is not a ``tp``; turned into a ConfigError by the caller."""

    def __init__(self, path: KeyPath, tp: Any, value: Any) -> None:
        super().__init__(path)
        self.path, self.tp, self.value = path, tp, value


def describe(tp: Any) -> str:
    """A type hint in words for messages: ``int or null``, ``one of 'full', 'eroded'``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return describe(args[0])
    if origin in (Union, types.UnionType) or origin is Literal:
        choices = _literal_choices(tp)
        rest = [describe(a) for a in args if get_origin(a) is not Literal and origin is not Literal]
        words = ["one of " + ", ".join(repr(c) for c in choices)] if choices else []
        return " or ".join(words + rest)
    if origin is list:
        return f"list[{describe(args[0])}]" if args else "list"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, Mapping)):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def type_error(err: TypeMismatch, where: str) -> ConfigError:
    """The ConfigError for a mismatch: key path, expected type, the value and where it came from."""
    value = err.value
    shown = "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
    msg = f"{dotted(err.path)}: expected {describe(err.tp)}, got {shown} (in {where})"
    if isinstance(value, str):
        choices = [a for a in _literal_choices(err.tp) if isinstance(a, str)]
        close = difflib.get_close_matches(value, choices, n=1)
        if close:
            msg += f"; did you mean '{close[0]}'?"
    return ConfigError(msg)


def _literal_choices(tp: Any) -> list[Any]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return list(args)
    if origin in (Union, types.UnionType):
        return [c for a in args for c in _literal_choices(a)]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def convert(tp: Any, value: Any, path: KeyPath, where: Callable[[KeyPath], str]) -> Any:
    """Check ``value`` against type hint ``tp`` and return it converted (int -> float, ...)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin is Annotated:
        if IntAsStr in args[1:] and _is_int(value):
            return str(value)
        return convert(args[0], value, path, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return convert(arm, value, path, where)
            except TypeMismatch as err:
                if err.path != path:  # the shape matched; the problem is deeper inside
                    raise
        raise TypeMismatch(path, tp, value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise TypeMismatch(path, tp, value)
    if value is None and (dataclasses.is_dataclass(tp) or origin is dict):
        value = {}  # an empty YAML section (``trainer:``) means "all defaults"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise TypeMismatch(path, tp, value)
        return build(tp, value, path, where)
    if origin is list:
        if not isinstance(value, list):
            raise TypeMismatch(path, tp, value)
        return [convert(args[0], v, (*path, i), where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeMismatch(path, tp, value)
        return {
            convert(args[0], k, (*path, str(k)), where): convert(args[1], v, (*path, k), where)
            for k, v in value.items()
        }
    if tp is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if tp is int and _is_int(value):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise TypeMismatch(path, tp, value)


def unknown_key(path: KeyPath, valid: Sequence[str], where: str, what: str = "key") -> ConfigError:
    """The ConfigError for an unknown key, suggesting the closest valid one (difflib)."""
    *parent, key = path
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    fix = (
        f"did you mean '{dotted((*parent, close[0]))}'?"
        if close
        else f"valid {what}s{' under ' + repr(dotted(parent)) if parent else ''}: "
        + ", ".join(sorted(valid))
    )
    return ConfigError(f"unknown {what} '{dotted(path)}' in {where}; {fix}")


def _field_names(tp: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else set()


def build(
    cls: type, data: Mapping[str, Any], path: KeyPath, where: Callable[[KeyPath], str], **extra: Any
) -> Any:
    """Make dataclass ``cls`` from ``data``, checking every key and value against its hints."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    settable = [n for n, f in fields.items() if f.metadata.get("from_yaml", True)]
    kwargs = dict(extra)
    for key, value in data.items():
        key_path = (*path, key)
        if key in fields and key not in settable:
            raise ConfigError(
                f"'{dotted(key_path)}' may not be set (in {where(key_path)}): it comes from "
                f"the config file's name; remove it, or rename the file"
            )
        if key not in settable:
            nested = [n for n in settable if key in _field_names(hints[n])]
            if nested and not difflib.get_close_matches(str(key), settable, n=1):
                hint = f"did you mean '{dotted((*path, nested[0], key))}'?"
                raise ConfigError(f"unknown key '{dotted(key_path)}' in {where(key_path)}; {hint}")
            raise unknown_key(key_path, settable, where(key_path))
        kwargs[key] = convert(hints[key], value, key_path, where)
    obj = cls(**kwargs)
    check_bounds(obj, path, where)
    check = CHECKS.get(cls)
    if check is not None:
        check(obj, path, where)
    return obj


# ---------------------------------------------------------------- ranges of numbers
@dataclass(frozen=True)
class Bounds:
    """The range a number of the config must lie in (each number, for a list); NaN and inf
    never do, whatever the range.

    Example:
        >>> Bounds(ge=0, le=1).describe(), Bounds(gt=0).admits(0.0), Bounds().admits(float("nan"))
        ('a number in [0, 1]', False, False)
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        """Whether ``value`` is a finite number within the bounds."""
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        """The range in words: ``a number > 0``, ``a number in [0, 1)``."""
        lo = f"[{_num(self.ge)}" if self.ge is not None else None
        lo = f"({_num(self.gt)}" if self.gt is not None else lo
        hi = f"{_num(self.le)}]" if self.le is not None else None
        hi = f"{_num(self.lt)})" if self.lt is not None else hi
        if lo and hi:
            return f"a number in {lo}, {hi}"
        if lo:
            return f"a number {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        if hi:
            return f"a number {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        return "a finite number"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FINITE = Bounds()
POSITIVE = Bounds(gt=0)
AT_LEAST_ONE = Bounds(ge=1)
NON_NEGATIVE = Bounds(ge=0)
PROBABILITY = Bounds(ge=0, le=1)
FRACTION = Bounds(gt=0, le=1)

BOUNDS: dict[type, dict[str, Bounds]] = {
    AugmentConfig: {
        "hflip": PROBABILITY, "vflip": PROBABILITY, "gaussian_blur": PROBABILITY,
        "scale": POSITIVE, "color_jitter": NON_NEGATIVE,
    },
    DataConfig: {
        "window": AT_LEAST_ONE, "eval_stride": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE,
        "eval_batch_size": AT_LEAST_ONE, "num_workers": NON_NEGATIVE,
        "samples_per_epoch": AT_LEAST_ONE, "x_scale": POSITIVE, "resize": AT_LEAST_ONE,
        "scale_range": POSITIVE, "crop": AT_LEAST_ONE, "crop_cat_max": FRACTION,
        "pad_multiple": AT_LEAST_ONE, "eval_scales": POSITIVE,
    },
    MaskingSection: {
        "fraction": PROBABILITY, "area": FRACTION, "aspect": POSITIVE, "count": AT_LEAST_ONE,
    },
    AuxLossSection: {"weight": NON_NEGATIVE},
    ModelConfig: {"drop_path_rate": Bounds(ge=0, lt=1)},
    OptimConfig: {
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "momentum": Bounds(ge=0, lt=1),
        "warmup_steps": NON_NEGATIVE, "warmup_ratio": PROBABILITY, "total_steps": AT_LEAST_ONE,
        "layer_decay": FRACTION, "backbone_lr": NON_NEGATIVE, "power": NON_NEGATIVE,
        "min_lr": NON_NEGATIVE,
    },
    ExperimentConfig: {"seed": Bounds(ge=0, le=2**32 - 1)},
}  # fmt: skip
"""Per dataclass, the range of its numeric fields, checked by :func:`build` after the types.
A float field without an entry must still be finite (:data:`FINITE`); null is always allowed
where the type allows it."""


def _numbers(value: Any) -> list[float]:
    """The numbers of a field's value: itself, or the items of a list (bools are not numbers)."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def check_bounds(obj: Any, path: KeyPath, where: Callable[[KeyPath], str]) -> None:
    """Refuse a number of dataclass ``obj`` outside its :data:`BOUNDS` (or, for any float
    field, NaN or inf), naming the key, the range, the value and where it came from."""
    bounds = BOUNDS.get(type(obj), {})
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = bounds.get(f.name, FINITE)
        for number in _numbers(value):
            if f.name not in bounds and not isinstance(number, float):
                continue  # ints without bounds: any value
            if not rule.admits(number):
                key_path = (*path, f.name)
                shown = value if not isinstance(value, float) else number
                raise ConfigError(
                    f"{dotted(key_path)}: must be {rule.describe()}"
                    f"{' (each item)' if isinstance(value, list) else ''}, got {shown} "
                    f"(in {where(key_path)})"
                )


# ---------------------------------------------------------------- cross-field checks
def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in (mappings recursively; anything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def joint_overrides(
    cfg: DataConfig, path: KeyPath = ("data",), where: Callable[[KeyPath], str] = lambda p: "config"
) -> list[tuple[str, DataConfig, float]]:
    """The sources of ``cfg.joint``: (name, the ``data`` section with that source's overrides
    deep-merged in and ``joint`` left out, ratio), in the order given.

    Each source is validated with :func:`build`, so a bad key or value is named
    ``data.joint.<source>.<key>``; ``ratio`` (default 1.0) must be a finite number > 0.

    Raises:
        ConfigError: no source, a bad ratio, a key that is set once for all sources.
        TypeMismatch: a value of the wrong type (the caller turns it into a ConfigError).

    Example:
        >>> cfg = DataConfig(card="mfnet", joint={"a": {"x": "thermal", "ratio": 3}, "b": {}})
        >>> [(name, src.card, src.x, ratio) for name, src, ratio in joint_overrides(cfg)]
        [('a', 'mfnet', 'thermal', 3.0), ('b', 'mfnet', 'dsm', 1.0)]
    """
    joint_path = (*path, "joint")
    if not cfg.joint:
        raise ConfigError(
            f"{dotted(joint_path)}: needs at least one source (in {where(joint_path)}), e.g. "
            f"joint: {{mfnet: {{card: mfnet, x: thermal}}}}; or null for one dataset"
        )
    base = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in JOINT_ONLY}
    out = []
    for name, overrides in cfg.joint.items():
        src_path = (*joint_path, name)
        data = dict(overrides)
        for key in JOINT_ONLY:
            if key in data:
                key_path = (*src_path, key)
                raise ConfigError(
                    f"'{dotted(key_path)}' may not be set per source (in {where(key_path)}); "
                    f"set '{dotted((*path, key))}' once for all sources"
                )
        ratio_path = (*src_path, "ratio")
        ratio = convert(float, data.pop("ratio", 1.0), ratio_path, where)
        if not (math.isfinite(ratio) and ratio > 0):
            raise ConfigError(
                f"{dotted(ratio_path)}: must be a number > 0 (the source's share of training "
                f"batches), got {ratio} (in {where(ratio_path)}); remove the source instead of "
                "giving it ratio 0"
            )
        out.append((name, build(DataConfig, _deep_merge(base, data), src_path, where), ratio))
    return out


def _check_data(cfg: DataConfig, path: KeyPath, where: Callable[[KeyPath], str]) -> None:
    if cfg.num_workers == "auto":
        _check_auto_workers(cfg, path, where)
    if cfg.joint is not None:
        joint_overrides(cfg, path, where)


def _check_auto_workers(cfg: DataConfig, path: KeyPath, where: Callable[[KeyPath], str]) -> None:
    """``num_workers: auto`` is resolved by the ISPRS datamodule only: refused for natural-image
    cards and joint runs (they take a number)."""
    from rsfusion.catalog import load_card
    from rsfusion.errors import UserError

    key = (*path, "num_workers")
    if cfg.joint is not None:
        kind = "runs over several datasets (data.joint)"
    else:
        try:
            card = load_card(cfg.card)
        except UserError:
            return  # an unknown card is reported where the data is loaded
        if card.kind != "natural":
            return
        kind = f"natural-image cards such as '{card.name}'"
    raise ConfigError(
        f"{dotted(key)}: 'auto' is not supported for {kind} yet (in {where(key)}); "
        "set a number of workers, e.g. 2"
    )


CHECKS: dict[type, Callable[[Any, KeyPath, Callable[[KeyPath], str]], None]] = {
    DataConfig: _check_data,
}
"""Checks across a dataclass's fields, run by :func:`build` once it is filled."""
