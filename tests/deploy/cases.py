"""Tiny models of every registered architecture, and checkpoint metadata for them.

Each case is a :class:`ModelSpec` at test sizes (as tests/models uses them) and the window it
is exported for. ``SLOW`` marks the cases whose export takes longest (still in the default run).
:func:`tiny_checkpoint` writes one of them as a checkpoint of the fake Vaihingen tiles (the int8
tests calibrate on them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsfusion.catalog import load_card
from rsfusion.models import ModelSpec, build_model
from rsfusion.models.checkpoint import CheckpointMeta

#: the committed fake Vaihingen tiles (the ``vaihingen_root`` fixture)
DATA = Path(__file__).parents[1] / "data" / "vaihingen"

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}  # img_size 518: position embeddings
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4]}
TINY_INTERNIMAGE = {"channels": 16, "depths": [1, 1, 1, 1], "groups": [1, 2, 4, 8]}
TINY_MIT = {"embed_dims": (8, 16, 32, 64), "num_heads": (1, 2, 4, 8), "depths": (1, 1, 1, 1)}
SMALL_UNET = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}

#: case -> (spec, window); the first word of a case is the registered model name
CASES: dict[str, tuple[ModelSpec, int]] = {
    "rgb_only": (ModelSpec("rgb_only", 6, 3, 1, kwargs=SMALL_UNET), 32),
    "early_fusion": (ModelSpec("early_fusion", 6, 3, 1, kwargs=SMALL_UNET), 32),
    # ViT (patch 14): 3 x 3 tokens, so UPerNet's pyramid pooling (bins 1, 2, 3, 6) needs the
    # matrix pooling, and the 37 x 37 position embedding is resampled to the grid
    "mobanet": (
        ModelSpec(
            "mobanet",
            6,
            3,
            1,
            backbone="vit_small_patch14_dinov2",
            kwargs={"backbone_kwargs": TINY_VIT, "proj_dim": 16, "head_channels": 8},
        ),
        42,
    ),  # fmt: skip
    "ktb": (
        ModelSpec(
            "ktb",
            6,
            3,
            1,
            backbone="swin_tiny_patch4_window7_224",
            kwargs={
                "backbone_kwargs": TINY_SWIN,
                "head_dim": 16,
                "aux_head_dim": 8,
                "image_size": 64,
            },
        ),
        64,
    ),  # fmt: skip
    # InternImage (DCNv3 as grid sampling), LoRA on the last stage, the Hamburger head's NMF
    "cpal": (
        ModelSpec(
            "cpal",
            5,
            3,
            1,
            backbone="internimage_t",
            kwargs={
                "backbone_kwargs": TINY_INTERNIMAGE,
                "head_channels": 32,
                "ham_channels": 32,
                "image_size": 64,
            },
        ),
        64,
    ),  # fmt: skip
    # MA-CLIP off (learnable modality embeddings); its per-sample embeddings fix the batch
    "segrgbx": (
        ModelSpec(
            "segrgbx",
            5,
            3,
            3,
            backbone="mit_b0",
            backbone_mode="trainable",
            seed=0,
            kwargs={"backbone_kwargs": TINY_MIT, "head_channels": 16},
        ),
        64,
    ),  # fmt: skip
}
SLOW = {"ktb", "cpal", "segrgbx"}


def build(case: str) -> tuple[nn.Module, CheckpointMeta]:
    """The case's model (seeded, evaluation mode) and checkpoint metadata for it. A method's
    parameters are moved off their initialisation: zero-initialised parts (adapter
    up-projections, gates, LoRA's B) would otherwise leave their paths out of the check."""
    spec, window = CASES[case]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("recipe.") or ".lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model, meta_for(spec, window)


def meta_for(spec: ModelSpec, window: int, **changes: Any) -> CheckpointMeta:
    """Checkpoint metadata of a Vaihingen-like RGB (+ DSM) model built from ``spec``."""
    data: dict[str, Any] = {
        "card": "vaihingen",
        "rgb_modality": "rgb",
        "rgb_bands": ["nir", "red", "green"][: spec.rgb_channels],
        "x_modality": "dsm" if spec.x_channels else None,
        "x_bands": ["elevation"] * spec.x_channels,
        "rgb_norm": {"mean": [120.0, 81.0, 82.5], "std": [55.0, 39.0, 37.5], "x_mean": None,
                     "x_std": None},
        "x_norm": {"mode": "raster_minmax", "scale": 1.0, "mean": None, "std": None},
        "classes": [f"class{i}" for i in range(spec.num_classes)],
        "palette": [[40 * i % 256, 90 * i % 256, 10 * i] for i in range(spec.num_classes)],
        "ignore_index": 255,
        "window": window,
        "model": dataclasses.asdict(spec),
        "config": {"seed": 0},
        "frozen_sha256": None,
    }  # fmt: skip
    data.update(changes)
    return CheckpointMeta.from_dict(data)


def inputs(spec: ModelSpec, batch: int, window: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Normalised-like inputs: RGB ~ N(0, 1), X in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, spec.rgb_channels, window, window, generator=gen)
    x = torch.rand(batch, max(spec.x_channels, 1), window, window, generator=gen)
    return rgb, x


def tiny_checkpoint(
    folder: Path, root: str | Path, seed: int = 0
) -> tuple[Path, nn.Module, CheckpointMeta]:
    """A tiny early-fusion U-Net written as a checkpoint whose config names the fake Vaihingen
    tiles (training 1, 3, 5; validation 2, 4) as train.py's would. Returns (path, model, meta)."""
    spec, window = CASES["early_fusion"]
    meta = meta_for(
        spec, window,
        palette=[list(c) for c in load_card("vaihingen").palette],
        config={"seed": 0, "data": {
            "card": "vaihingen", "root": str(root), "rgb": "rgb", "x": "dsm",
            "train_tiles": ["1", "3", "5"], "val_tiles": ["2", "4"], "test_tiles": ["2", "4"],
            "eval_labels": "eroded", "window": window,
        }},
    )  # fmt: skip
    model = build_model(meta.spec).eval()  # the frozen encoder as prediction rebuilds it
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    meta = meta.with_frozen(model)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = folder / "last.ckpt"
    torch.save({"state_dict": state, "rsfusion": meta.to_dict()}, path)
    return path, model, meta
