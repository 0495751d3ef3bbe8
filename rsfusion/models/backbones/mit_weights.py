"""Load pre-trained SegFormer MiT weights into a :class:`MiTBackbone` (``mit_b0``..``mit_b5``).

The backbone wraps segmentation-models-pytorch's ``MixVisionTransformer`` (``self.mit``), whose
parameter names are SegFormer's own (``patch_embed{1-4}.proj|norm``,
``block{1-4}.{j}.norm1|attn.q|attn.kv|attn.proj|attn.sr|attn.norm|norm2|mlp.fc1|
mlp.dwconv.dwconv|mlp.fc2``, stage output norms ``norm{1-4}``), so no renaming is needed.
Layouts read:

* **ImageNet-1K** (NVlabs/SegFormer ``mit_b0.pth``..``mit_b5.pth``): a plain state dict, or one
  wrapped in ``{"state_dict"|"model": ...}``; the classifier ``head.*`` is dropped;
* **segmentation** (SegFormer's mmseg checkpoints): ``{"state_dict": {"backbone.…",
  "decode_head.…"}}``; the backbone part is read, the rest dropped. Any other prefix
  (``encoder.`` of an smp model, ``mit.`` of a :class:`MiTBackbone`, ``module.``) is found
  from the first patch embedding's key;
* **smp**: the encoder state dicts segmentation-models-pytorch saves and serves.

Sources: a local file (.pth/.pt/.bin/.ckpt/.safetensors) or smp's ImageNet weights by name:
``mit_b2``, ``mit_b2.imagenet``, ``smp-hub/mit_b2.imagenet`` or
``hf-hub:smp-hub/mit_b2.imagenet`` (the Hugging Face repository and revision of smp's
``pretrained_settings``, file ``model.safetensors``). Offline without a cached copy a name fails
at once with :class:`WeightsUnavailable`, which says where to download the file. mmseg 1.x's
own re-implementation (``layers.*.*.projection``) and Hugging Face transformers' SegFormer are
refused with a hint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders
from torch import Tensor

from rsfusion.errors import WeightsUnavailable
from rsfusion.models.backbones.mit import MIT_NAMES, MiTBackbone, mit_settings
from rsfusion.models.backbones.weights import (
    _FIX,
    LoadReport,
    _first,
    _offline,
    _read_file,
    _unwrap,
    hub_failure,
    hub_session,
    read_source,
    tensors_digest,
)

__all__ = ["MIT_HUB_NAMES", "load_mit_weights", "mit_hub_repo"]

#: Hub names accepted for smp's ImageNet weights of each variant (besides ``hf-hub:`` + repo).
MIT_HUB_NAMES: tuple[str, ...] = tuple(
    name for v in MIT_NAMES for name in (v, f"{v}.imagenet", f"smp-hub/{v}.imagenet")
)

_HUB_NAME = re.compile(
    r"^(?:(?:hf-hub:)?smp-hub/(mit_b[0-5])\.imagenet|(mit_b[0-5])(?:\.imagenet)?)$"
)
_HUB_FILE = "model.safetensors"  # what smp's get_encoder downloads
_ANCHOR = "patch_embed1.proj.weight"
#: Classification / segmentation heads that may sit next to the backbone keys.
_HEADS = ("head.", "decode_head.", "auxiliary_head.")
_BLOCK = re.compile(r"^block(\d)\.(\d+)\.")


def load_mit_weights(
    backbone: MiTBackbone, source: str | Path, *, strict: bool = True
) -> LoadReport:
    """Load MiT weights from a local file or an smp hub name into ``backbone.mit``, in place.

    Args:
        backbone: the :class:`MiTBackbone` to fill.
        source: a file path, or a name of :data:`MIT_HUB_NAMES` (``hf-hub:smp-hub/mit_bN.imagenet``
            too), fetched from smp's Hugging Face repository or found in the cache.
        strict: raise when a model key is not in the source, a backbone key of the source has
            no place in the model, or a shape does not fit. A source of another variant (embed
            dims, depths) is refused either way.

    Returns:
        The :class:`LoadReport` (keys in ``MixVisionTransformer`` names; ``unexpected``: the
        dropped source keys: classifier, decode heads).

    Raises:
        WeightsUnavailable: the file does not exist, or the name cannot be fetched.
        ValueError: the weights do not fit the model (the message names both variants).
    """
    tensors, label = _tensors(source)
    body, outside = _split(tensors, label)
    hint = _mismatch_hint(body, backbone)
    if hint:
        raise ValueError(f"{label} does not fit the model: {hint}")
    expected = backbone.mit.state_dict()
    heads = [k for k in body if k.startswith(_HEADS)]
    extra = [k for k in body if k not in expected and k not in heads]
    if extra and strict:
        raise ValueError(
            f"{label}: {len(extra)} backbone keys have no place in the model: {_first(extra)}. "
            f"Fix: {_FIX} pointing at a SegFormer MiT checkpoint of this variant."
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
            f"Fix: {_FIX} pointing at a SegFormer (NVlabs mit_bN.pth, mmseg SegFormer) or smp "
            "MiT checkpoint of this variant."
        )
    with torch.no_grad():
        backbone.mit.load_state_dict(state, strict=False)
    now = backbone.mit.state_dict()
    loaded = {k: now[k] for k in state}
    dropped = heads + extra + bad + outside
    return LoadReport(label, len(loaded), missing, dropped, [], tensors_digest(loaded))


def mit_hub_repo(variant: str) -> tuple[str, str]:
    """smp's Hugging Face (repository, revision) of ``variant``'s ImageNet weights."""
    settings = mix_transformer_encoders[variant]["pretrained_settings"]["imagenet"]
    return str(settings["repo_id"]), str(settings["revision"])


def _tensors(source: str | Path) -> tuple[dict[str, Tensor], str]:
    """The source's tensors (wrappers removed) and its label; smp hub names are fetched."""
    name = str(source)
    m = None if isinstance(source, Path) else _HUB_NAME.match(name)
    if m and not Path(name).expanduser().is_file():
        return _unwrap(_read_file(_hub_file(m[1] or m[2], name)), name), name
    return read_source(source, _unknown_name)


def _unknown_name(name: str) -> object:
    raise WeightsUnavailable(
        f"{name!r} is neither an existing weights file nor a MiT hub name "
        f"(mit_b0..mit_b5, mit_bN.imagenet, smp-hub/mit_bN.imagenet). Fix: {_FIX}."
    )


def _cached(repo: str, filename: str, revision: str) -> str | None:
    """The file's path in the Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, revision=revision)
    return hit if isinstance(hit, str) else None


def _download(repo: str, filename: str, revision: str) -> str:
    """Download one file of a Hugging Face repository (into its cache); the network part."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, revision=revision)


def _hub_file(variant: str, name: str) -> Path:
    """The local path of smp's ImageNet ``variant`` weights: the Hugging Face cache, or a
    download; :class:`WeightsUnavailable` (saying where to get the file) when neither works."""
    repo, revision = mit_hub_repo(variant)
    url = f"https://huggingface.co/{repo}/resolve/{revision}/{_HUB_FILE}"
    fix = (
        f"Fix: download {url} (or NVlabs SegFormer's ImageNet {variant}.pth) on a machine with "
        f"internet, copy it here and {_FIX} (pass the file's path)."
    )
    cached = _cached(repo, _HUB_FILE, revision)
    if cached is not None:
        return Path(cached)
    if _offline():
        raise WeightsUnavailable(
            f"pre-trained weights {name!r} are unavailable: HF_HUB_OFFLINE is set and nothing "
            f"is cached. {fix}"
        )
    try:
        # the hub found unreachable (once per process): offline mode, no download retries
        with hub_session() as why:
            return Path(_download(repo, _HUB_FILE, revision))
    except Exception as e:  # network, missing file, hub errors: one clear message
        raise WeightsUnavailable(
            f"pre-trained weights {name!r} are unavailable ({hub_failure(name, e, why)}). {fix}"
        ) from e


def _split(tensors: dict[str, Tensor], label: str) -> tuple[dict[str, Tensor], list[str]]:
    """Strip the prefix (``backbone.``, ``encoder.``, ``mit.``, ``module.``) found from the first
    patch embedding's key: (the source's MiT tensors, the keys outside the prefix)."""
    anchors = sorted((k for k in tensors if k.endswith(_ANCHOR)), key=len)
    if not anchors:
        raise ValueError(
            f"{label}: no {_ANCHOR} found: not a SegFormer MiT checkpoint. " + _hint(tensors)
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    body = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    outside = [k for k in tensors if not k.startswith(prefix)]
    return body, outside


def _hint(tensors: dict[str, Tensor]) -> str:
    """What the keys of a source without SegFormer's patch embedding look like."""
    if any(".projection." in k and "layers." in k for k in tensors):
        return (
            "It is in mmseg 1.x's own MiT layout (layers.*.*.projection, attn.attn.in_proj_weight, "
            "ffn.layers), which is not read here: use NVlabs SegFormer's mit_bN.pth or smp's "
            "weights."
        )
    if any("patch_embeddings." in k for k in tensors):
        return (
            "It looks like a Hugging Face transformers SegFormer checkpoint, which is not read "
            "here: use NVlabs SegFormer's mit_bN.pth or smp's weights."
        )
    return f"Fix: {_FIX} pointing at a SegFormer (NVlabs, mmseg) or smp MiT checkpoint."


def _arch(state: dict[str, Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(embed dims, blocks per stage) of MiT tensors in ``MixVisionTransformer`` names."""
    proj = [state.get(f"patch_embed{i}.proj.weight") for i in range(1, 5)]
    if any(p is None for p in proj):
        return None
    depth = [0] * 4
    for key in state:
        if (m := _BLOCK.match(key)) and 1 <= int(m[1]) <= 4:
            depth[int(m[1]) - 1] = max(depth[int(m[1]) - 1], int(m[2]) + 1)
    return tuple(int(p.shape[0]) for p in proj), tuple(depth)


def _variant(arch: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    """The SegFormer variant with these dims and depths, or ``MiT``."""
    for name in MIT_NAMES:
        settings = mit_settings(name)
        if (tuple(settings["embed_dims"]), tuple(settings["depths"])) == arch:
            return name
    return "MiT"


def _mismatch_hint(state: dict[str, Tensor], backbone: MiTBackbone) -> str | None:
    """'this file is mit_b1 (embed dims ..., depths ...), the model is mit_b0 (...)' when the
    dims or depths differ."""
    have = _arch(state)
    want = _arch(backbone.mit.state_dict())
    if have is None or want is None or have == want:
        return None

    def describe(arch: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
        return f"(embed dims {arch[0]}, depths {arch[1]})"

    return (
        f"this file is {_variant(have)} {describe(have)}, the model is {backbone.name} "
        f"{describe(want)}. Fix: set model.backbone to the file's variant or point "
        "model.weights at a matching file."
    )
