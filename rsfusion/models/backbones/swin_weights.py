"""Load pre-trained Swin weights into a :class:`SwinBackbone` (or a bare timm SwinTransformer).

Layouts read (KTB's Swin checkpoints among them):

* **official** (microsoft/Swin-Transformer): ``{"model": ...}``, patch merging stored at the end
  of stage ``i`` as ``layers.i.downsample``, classifier ``head.*``;
* **timm**: patch merging at the start of stage ``i + 1``, classifier ``head.fc.*``;
* **segmentation** (Swin-Transformer-Semantic-Segmentation / mmseg UperNet, KTB):
  ``{"state_dict": {"backbone.…"}}`` in the official block layout plus per-stage output norms
  ``norm0..norm3`` (``norm3`` is the stage-4 output norm, timm's ``norm``).

Renaming, window-size changes (relative-position bias tables resized) and patch-size changes are
done by timm's own ``checkpoint_filter_fn``; this module strips wrappers and prefixes, routes the
stage norms and checks the dims. Sources: a local file (.pth/.pt/.bin/.ckpt/.safetensors) or a
timm / ``hf-hub:`` name (offline without a cached copy: :class:`WeightsUnavailable` at once).
mmseg's own re-implementation (``stages.*.attn.w_msa``, ``ffn.layers``) is refused with a hint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import Tensor

from rsfusion.models.backbones.swin import SwinBackbone
from rsfusion.models.backbones.weights import (
    _FIX,
    LoadReport,
    _first,
    read_source,
    tensors_digest,
)

__all__ = ["load_swin_weights"]

_ANCHOR = "patch_embed.proj.weight"
_STAGE_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_TABLE = "relative_position_bias_table"


def load_swin_weights(
    model: SwinBackbone | SwinTransformer, source: str | Path, *, strict: bool = True
) -> LoadReport:
    """Load Swin weights from a local file or a timm / hub name, in place.

    Args:
        model: a :class:`SwinBackbone` (its stage norms are filled too and the X stream's norms
            re-copied) or a timm ``SwinTransformer``.
        source: a file path, or a timm model name (``swin_base_patch4_window12_384.ms_in22k``,
            ``hf-hub:timm/...``) whose pre-trained weights timm can fetch or finds cached.
        strict: raise when a model key is not in the source (stage-1..3 output norms excepted:
            classification checkpoints have none, they stay at weight 1, bias 0), a shape does
            not fit, or the source's width or depths differ. Another width is refused anyway.

    Returns:
        The :class:`LoadReport` (``unexpected`` in timm names after conversion).

    Raises:
        WeightsUnavailable: the file does not exist, or the hub name cannot be fetched.
        ValueError: the weights do not fit the model (the message names both models' dims).
    """
    backbone = model if isinstance(model, SwinBackbone) else None
    swin: SwinTransformer = model.swin if backbone is not None else model
    tensors, label = _tensors(source)
    body, norms = _split(tensors, label)
    hint = _mismatch_hint(body, swin)
    width = body[_ANCHOR].shape[0]
    if hint and (strict or width != swin.patch_embed.proj.weight.shape[0]):
        raise ValueError(f"{label} does not fit the model: {hint}")
    modules = dict(swin.named_modules())
    dropped = [k for k in body if k.endswith(_TABLE) and k[: -len(_TABLE) - 1] not in modules]
    body = {k: v for k, v in body.items() if k not in dropped}
    resized = _resize_notes(body, swin)
    state = checkpoint_filter_fn(body, swin)
    expected = swin.state_dict()
    last = len(swin.layers) - 1
    if last in norms:
        if "norm.weight" in state:
            dropped += ["norm.weight", "norm.bias"]  # the segmentation norm3 wins
        state.update({f"norm.{k}": v for k, v in norms.pop(last).items()})
    dropped += [k for k in state if k not in expected]
    state = {k: v for k, v in state.items() if k in expected}
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad and strict:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad]
        raise ValueError(f"{label}: shapes do not fit: {_first(shapes, 3)}")
    dropped += bad
    state = {k: v for k, v in state.items() if k not in bad}
    missing = [k for k in expected if k not in state]
    if missing and strict:
        raise ValueError(
            f"{label}: {len(missing)} model keys not in the file: {_first(missing)}. "
            f"Fix: {_FIX} pointing at an official, timm or Swin-segmentation checkpoint."
        )
    stage_state = _stage_norm_state(backbone, norms, dropped, missing)
    with torch.no_grad():
        swin.load_state_dict(state, strict=False)
        if backbone is not None:
            backbone.stage_norms.load_state_dict(stage_state, strict=False)
            backbone.sync_x_norms()
    now = swin.state_dict()
    loaded = {k: now[k] for k in state}
    if backbone is not None:
        kept = backbone.stage_norms.state_dict()
        loaded.update({f"stage_norms.{k}": kept[k] for k in stage_state})
    return LoadReport(label, len(loaded), missing, dropped, resized, tensors_digest(loaded))


def _tensors(source: str | Path) -> tuple[dict[str, Tensor], str]:
    """The source's tensors (wrappers removed) and its label."""
    return read_source(source)


def _split(
    tensors: dict[str, Tensor], label: str
) -> tuple[dict[str, Tensor], dict[int, dict[str, Tensor]]]:
    """Strip the prefix (``backbone.``, ``module.``); pull out ``norm{i}`` stage norms."""
    anchors = sorted((k for k in tensors if k.endswith(_ANCHOR)), key=len)
    if not anchors:
        if any(".w_msa." in k or "patch_embed.projection" in k for k in tensors):
            raise ValueError(
                f"{label} is in mmseg's own Swin layout (stages.*.attn.w_msa, ffn.layers, "
                "unfold-ordered patch merging), which is not read here: use the official "
                "Swin-Transformer(-Semantic-Segmentation) checkpoint or timm's weights."
            )
        raise ValueError(f"{label}: no {_ANCHOR} found: not a Swin checkpoint. Fix: {_FIX}.")
    prefix = anchors[0][: -len(_ANCHOR)]
    body: dict[str, Tensor] = {}
    norms: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if m := _STAGE_NORM.match(name):
            norms.setdefault(int(m[1]), {})[m[2]] = value
        else:
            body[name] = value
    return body, norms


def _stage_norm_state(
    backbone: SwinBackbone | None,
    norms: dict[int, dict[str, Tensor]],
    dropped: list[str],
    missing: list[str],
) -> dict[str, Tensor]:
    """``norm{i}`` (stages 1-3) as ``stage_norms`` entries; the rest reported as dropped."""
    count = len(backbone.stage_norms) if backbone is not None else 0
    state = {
        f"{i}.{k}": v for i, part in sorted(norms.items()) if i < count for k, v in part.items()
    }
    dropped += [f"norm{i}.{k}" for i, part in sorted(norms.items()) if i >= count for k in part]
    if backbone is not None:
        expected = backbone.stage_norms.state_dict()
        bad = [k for k, v in state.items() if v.shape != expected[k].shape]
        if bad:
            raise ValueError(f"stage output norms do not fit: {_first(bad)}")
        missing += [f"stage_norms.{k}" for k in expected if k not in state]
    return state


def _dims(state: dict[str, Tensor]) -> tuple[int, tuple[int, ...]]:
    """(embed width, blocks per stage) of timm- or official-layout Swin tensors."""
    depth: dict[int, int] = {}
    for key in state:
        if m := _BLOCK.match(key):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    depths = tuple(depth.get(i, 0) for i in range(max(depth, default=-1) + 1))
    return int(state[_ANCHOR].shape[0]), depths


def _mismatch_hint(state: dict[str, Tensor], swin: SwinTransformer) -> str | None:
    """'this file is Swin (embed 128, depths ...), the model is Swin (...)' when they differ."""
    have = _dims(state)
    want = (int(swin.patch_embed.proj.weight.shape[0]), tuple(len(s.blocks) for s in swin.layers))
    if have == want:
        return None
    return (
        f"this file is Swin (embed {have[0]}, depths {have[1]}), the model is Swin "
        f"(embed {want[0]}, depths {want[1]}). Fix: set model.backbone to the file's variant "
        "(e.g. swin_base_patch4_window12_384 for embed 128) or point model.weights at a "
        "matching file."
    )


def _resize_notes(state: dict[str, Tensor], swin: SwinTransformer) -> list[str]:
    """One line per kind of tensor that checkpoint_filter_fn will resize."""
    notes = []
    modules = dict(swin.named_modules())
    tables = [k for k in state if k.endswith(_TABLE)]
    changed = [
        k for k in tables if state[k].shape != getattr(modules[k[: -len(_TABLE) - 1]], _TABLE).shape
    ]
    if changed:
        old = _window(state[changed[0]].shape[0])
        new = tuple(modules[changed[0][: -len(_TABLE) - 1]].window_size)
        notes.append(
            f"{_TABLE}: window {old}x{old} -> {new[0]}x{new[1]} in {len(changed)} blocks "
            "(timm resize_rel_pos_bias_table)"
        )
    proj = state[_ANCHOR]
    want = swin.patch_embed.proj.weight.shape
    if proj.shape[-2:] != want[-2:]:
        notes.append(f"patch_embed.proj: kernel {tuple(proj.shape[-2:])} -> {tuple(want[-2:])}")
    return notes


def _window(table_rows: int) -> int:
    """Square window size of a (2w-1)^2-row bias table."""
    return (math.isqrt(table_rows) + 1) // 2
