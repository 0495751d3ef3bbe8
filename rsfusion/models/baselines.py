"""Baselines: RGB-only and early fusion (RGB and X stacked as input channels) smp models."""

from __future__ import annotations

import warnings
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from rsfusion.errors import WeightsError
from rsfusion.models.base import ModelSpec, SegmentationModel
from rsfusion.registry import ModelOptions, register_model


def _adapt_first_conv(state: dict[str, Tensor], model_state: dict[str, Tensor]) -> None:
    """Widen a pre-trained first convolution to more input channels (extra = mean of RGB)."""
    for key, value in list(state.items()):
        target = model_state.get(key)
        if target is None or value.ndim != 4 or value.shape == target.shape:
            continue
        if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            extra = target.shape[1] - value.shape[1]
            if extra > 0:
                mean = value.mean(dim=1, keepdim=True).expand(-1, extra, -1, -1)
                state[key] = torch.cat([value, mean], dim=1) * value.shape[1] / target.shape[1]


def load_encoder_weights(encoder: nn.Module, spec: ModelSpec) -> None:
    """Load ``spec.weights`` (a local file) into an encoder, or explain why it cannot be done."""
    path = Path(spec.weights or "")
    from rsfusion.models.checkpoint import read_torch_file

    state = read_torch_file(path, "weights", name=f"model.weights {path}")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model_state = encoder.state_dict()
    _adapt_first_conv(state, model_state)
    fits = {k: v for k, v in state.items() if k in model_state and v.shape == model_state[k].shape}
    missing = [k for k in model_state if k not in fits]
    if len(fits) < 0.9 * len(model_state):
        raise WeightsError(
            f"{path} does not fit backbone '{spec.backbone}': only {len(fits)} of "
            f"{len(model_state)} tensors matched (e.g. missing {missing[:3]}). "
            "Use a file saved from the same architecture."
        )
    model_state.update(fits)
    nn.Module.load_state_dict(encoder, model_state)


def _smp_model(spec: ModelSpec, in_channels: int) -> nn.Module:
    weights = spec.weights
    local = weights is not None and Path(weights).suffix in (".pth", ".pt", ".bin")
    hub = weights if weights and not local else None

    def create(encoder_weights: str | None) -> nn.Module:
        return smp.create_model(
            spec.arch,
            encoder_name=spec.backbone,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=spec.num_classes,
            **spec.kwargs,
        )

    try:
        model = create(hub)
    except Exception as err:  # offline hub, unknown weights name
        if hub is None or spec.weights_required:
            raise WeightsError(
                f"cannot build {spec.arch}/{spec.backbone} with weights '{weights}': {err}. "
                "Give model.weights a local file, or set model.weights=null for random init."
            ) from err
        warnings.warn(
            f"PRE-TRAINED WEIGHTS '{weights}' FOR {spec.backbone} ARE NOT AVAILABLE ({err}); "
            "TRAINING STARTS FROM RANDOM INITIALISATION. Set model.weights to a local file, "
            "or model.weights_required=true to make this an error.",
            UserWarning,
            stacklevel=2,
        )
        model = create(None)
    if local:
        load_encoder_weights(model.encoder, spec)
    return model


class RGBOnly(SegmentationModel):
    """An smp segmentation model that sees the orthophoto alone (X is ignored)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.net = _smp_model(spec, spec.rgb_channels)

    def forward(self, rgb: Tensor, x: Tensor | None = None) -> Tensor:
        return self.net(rgb)


class EarlyFusion(SegmentationModel):
    """An smp segmentation model on RGB and X stacked as input channels."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.x_channels == 0:
            raise ValueError("early_fusion needs an X modality: set data.x (e.g. dsm)")
        self.net = _smp_model(spec, spec.rgb_channels + spec.x_channels)

    def forward(self, rgb: Tensor, x: Tensor | None = None) -> Tensor:
        if x is None:
            raise ValueError("early_fusion needs the X input (image_x) in every batch")
        return self.net(torch.cat([rgb, x], dim=1))


#: ``model.kwargs`` of the baselines: the smp architecture's keyword arguments (``model.arch``),
#: less those the builder sets.
SMP_OPTIONS = ModelOptions(
    lambda arch: getattr(smp, arch, None),
    fixed=("encoder_name", "encoder_weights", "in_channels", "classes"),
)


@register_model("rgb_only", SMP_OPTIONS)
def rgb_only(spec: ModelSpec) -> nn.Module:
    return RGBOnly(spec)


@register_model("early_fusion", SMP_OPTIONS)
def early_fusion(spec: ModelSpec) -> nn.Module:
    return EarlyFusion(spec)
