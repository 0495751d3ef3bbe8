"""Load pre-trained InternImage weights into an :class:`InternImageBackbone` (CPAL's
backbone).

The backbone's keys are the authors' own (``patch_embed.*``, ``levels.{i}.blocks.{j}.dcn.*``,
``levels.{i}.downsample.*``, ``levels.{i}.norm.*``, ``levels.2.post_norms.*``; module docstring
of :mod:`rsfusion.models.backbones.internimage`), so no renaming is needed. Layouts read:

* **classification** (OpenGVLab/InternImage ``internimage_*_1k_224.pth``, ``*_22k_*.pth``, ...):
  ``{"model": state_dict}`` or a plain state dict; the classifier (``conv_head``, ``head``, and
  H/G's ``dcnv3_head_x3``, ``dcnv3_head_x4``, ``clip_projector``, ``fc_norm``) is dropped;
* **segmentation** (the authors' mmseg UperNet / Mask2Former checkpoints):
  ``{"state_dict": {"backbone.…", "decode_head.…", ...}}``; the backbone part is read, the rest
  dropped. Any other wrapper prefix (``module.``, ``model.``) is found from the stem's key.

Sources: a local file (.pth/.pt/.bin/.ckpt/.safetensors) or an official checkpoint name
(``internimage_t_1k_224``, ``internimage_h_jointto22k_384``, ... as in the authors'
Hugging Face repository ``OpenGVLab/InternImage``); offline (``HF_HUB_OFFLINE``, or the hub found
unreachable once per process) without a cached copy a name fails at once with
:class:`WeightsUnavailable`, which says where to download the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from rsfusion.errors import WeightsUnavailable
from rsfusion.models.backbones.internimage import InternImageBackbone
from rsfusion.models.backbones.weights import (
    _FIX,
    LoadReport,
    _first,
    _read_file,
    hub_failure,
    hub_session,
    hub_unreachable,
    read_source,
    tensors_digest,
)

__all__ = ["INTERNIMAGE_CHECKPOINTS", "HUB_REPO", "load_internimage_weights"]

#: The authors' Hugging Face repository holding the ``.pth`` checkpoints.
HUB_REPO = "OpenGVLab/InternImage"

#: Official checkpoint names (files ``{name}.pth`` in :data:`HUB_REPO`; the authors' READMEs).
INTERNIMAGE_CHECKPOINTS: tuple[str, ...] = (
    "internimage_t_1k_224",
    "internimage_s_1k_224",
    "internimage_b_1k_224",
    "internimage_l_22k_192to384",
    "internimage_l_22kto1k_384",
    "internimage_xl_22k_192to384",
    "internimage_xl_22kto1k_384",
    "internimage_h_jointto22k_384",
    "internimage_h_22kto1k_384",
    "internimage_h_22kto1k_640",
    "internimage_g_pretrainto22k_384",
    "internimage_g_22kto1k_512",
)

_ANCHOR = "patch_embed.conv1.weight"
#: The authors' classification heads (T..XL: conv_head + head; H/G: the CLIP projector head).
_HEADS = ("conv_head.", "head.", "dcnv3_head_x3.", "dcnv3_head_x4.", "clip_projector.", "fc_norm.")
_BLOCK = re.compile(r"^levels\.(\d+)\.blocks\.(\d+)\.")


def load_internimage_weights(
    model: InternImageBackbone, source: str | Path, *, strict: bool = True
) -> LoadReport:
    """Load InternImage weights from a local file or an official checkpoint name, in place.

    Args:
        model: the :class:`InternImageBackbone` to fill.
        source: a file path, or one of :data:`INTERNIMAGE_CHECKPOINTS` (fetched from
            :data:`HUB_REPO` or found in the Hugging Face cache).
        strict: raise when a model key is not in the source, a backbone key of the source has
            no place in the model (e.g. layer-scale ``gamma`` of a T segmentation checkpoint in
            a model built without ``layer_scale``), or a shape does not fit. A source of another
            architecture (channels, depths, groups) is refused either way.

    Returns:
        The :class:`LoadReport` (``unexpected``: the dropped source keys: heads, decode heads).

    Raises:
        WeightsUnavailable: the file does not exist, or the name cannot be fetched.
        ValueError: the weights do not fit the model (the message names both architectures).
    """
    tensors, label = _tensors(source)
    body, outside = _split(tensors, label)
    hint = _mismatch_hint(body, model)
    if hint:
        raise ValueError(f"{label} does not fit the model: {hint}")
    expected = model.state_dict()
    heads = [k for k in body if k.startswith(_HEADS)]
    extra = [k for k in body if k not in expected and k not in heads]
    if extra and strict:
        raise ValueError(
            f"{label}: {len(extra)} backbone keys have no place in the model: {_first(extra)}. "
            + _extra_hint(extra)
        )
    state = {k: v for k, v in body.items() if k in expected}
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad and strict:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad]
        raise ValueError(f"{label}: shapes do not fit: {_first(shapes, 3)}")
    state = {k: v for k, v in state.items() if k not in bad}
    missing = [k for k in expected if k not in state]
    if missing and strict:
        raise ValueError(
            f"{label}: {len(missing)} model keys not in the file: {_first(missing)}. "
            f"Fix: {_FIX} pointing at an official InternImage checkpoint of this variant "
            "(or build the model with the file's settings, e.g. layer_scale)."
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    now = model.state_dict()
    loaded = {k: now[k] for k in state}
    dropped = heads + extra + bad + outside
    return LoadReport(label, len(loaded), missing, dropped, [], tensors_digest(loaded))


def _tensors(source: str | Path) -> tuple[dict[str, Tensor], str]:
    """The source's tensors (wrappers removed) and its label (hub names: the official files)."""
    return read_source(source, lambda name: _read_file(_hub_file(name)))


def _hub_file(name: str) -> Path:
    """The local path of an official checkpoint: the Hugging Face cache, or a download."""
    if name not in INTERNIMAGE_CHECKPOINTS:
        raise WeightsUnavailable(
            f"{name!r} is neither an existing weights file nor an official InternImage "
            f"checkpoint name ({', '.join(INTERNIMAGE_CHECKPOINTS)}). Fix: {_FIX}."
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    filename = f"{name}.pth"
    url = f"https://huggingface.co/{HUB_REPO}/resolve/main/{filename}"
    fix = f"Fix: download {url} on a machine with internet, copy it here and {_FIX}."
    cached = try_to_load_from_cache(HUB_REPO, filename)
    if isinstance(cached, str):
        return Path(cached)
    why = hub_unreachable()  # decided once per process: no download retries offline
    if why:
        raise WeightsUnavailable(
            f"pre-trained weights {name!r} are unavailable: {why}, and nothing is cached. {fix}"
        )
    try:
        with hub_session() as why:
            return Path(hf_hub_download(HUB_REPO, filename))
    except Exception as e:  # network, missing file, hub errors: one clear message
        raise WeightsUnavailable(
            f"pre-trained weights {name!r} are unavailable ({hub_failure(name, e, why)}). {fix}"
        ) from e


def _split(tensors: dict[str, Tensor], label: str) -> tuple[dict[str, Tensor], list[str]]:
    """Strip the prefix (``backbone.``, ``module.``) found from the stem's key: (the source's
    InternImage tensors, the keys outside the prefix, e.g. ``decode_head.*``)."""
    anchors = sorted((k for k in tensors if k.endswith(_ANCHOR)), key=len)
    if not anchors:
        raise ValueError(
            f"{label}: no {_ANCHOR} found: not an InternImage checkpoint. Fix: {_FIX} pointing "
            "at an official InternImage (classification or segmentation) checkpoint."
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    body = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    outside = [k for k in tensors if not k.startswith(prefix)]
    return body, outside


def _arch(state: dict[str, Tensor]) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """(channels, blocks per level, groups per level) of InternImage tensors; a level's groups
    are its ``dcn.mask`` rows over the 9 points of the 3x3 DCN kernel (rows as they are where
    they do not divide, e.g. ``remove_center``)."""
    stem = state.get("patch_embed.conv2.weight")
    if stem is None:
        return None
    depth: dict[int, int] = {}
    for key in state:
        if m := _BLOCK.match(key):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    depths = tuple(depth.get(i, 0) for i in range(max(depth, default=-1) + 1))
    groups = []
    for i in range(len(depths)):
        mask = state.get(f"levels.{i}.blocks.0.dcn.mask.weight")
        rows = -1 if mask is None else int(mask.shape[0])
        groups.append(rows // 9 if rows % 9 == 0 else rows)
    return int(stem.shape[0]), depths, tuple(groups)


def _mismatch_hint(state: dict[str, Tensor], model: InternImageBackbone) -> str | None:
    """'this file is InternImage (channels 64, ...), the model is (...)' when they differ."""
    have = _arch(state)
    want = _arch(model.state_dict())
    if have is None or want is None or have == want:
        return None
    names = ("channels", "depths", "groups")
    describe = [", ".join(f"{n} {v}" for n, v in zip(names, arch)) for arch in (have, want)]
    return (
        f"this file is InternImage ({describe[0]}), the model is {model.name} ({describe[1]}). "
        "Fix: set model.backbone to the file's variant (internimage_t: channels 64, "
        "internimage_h: channels 320, ...) or point model.weights at a matching file."
    )


def _extra_hint(extra: list[str]) -> str:
    """What setting the source's extra keys point at."""
    fixes = {
        ".gamma1": "the file has layer-scale parameters: build with layer_scale=1.0 "
        "(the authors' segmentation configs do, for T..XL)",
        ".res_post_norm1.": "the file has res-post-norms: build with res_post_norm=True",
        "center_feature_scale_proj": "the file has centre feature scales: build with "
        "center_feature_scale=True",
        ".post_norms.": "the file has level-2 post-norms: build with level2_post_norm=True",
        ".norm.": "the file has level output norms (a pre-norm variant): check post_norm",
    }
    found = [fix for part, fix in fixes.items() if any(part in k for k in extra)]
    return "Fix: " + "; ".join(found) if found else f"Fix: {_FIX} pointing at a matching file."
