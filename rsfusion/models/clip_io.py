"""open_clip CLIPs for MA-CLIP (:mod:`rsfusion.models.maclip`): built from a config, read from
a local weights file, or fetched by an open_clip pretrained name (which fails at once, saying to
pass a local file, when the hub cannot be reached), and saved as one self-describing file.

Files are read with ``torch.load(weights_only=True)`` or safetensors; every write is atomic (a
temporary name in the same folder, then a rename).

Example:
    >>> clip = build_clip(tiny_clip_config())
    >>> clip.encode_image(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 32])
"""

from __future__ import annotations

import copy
import difflib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from rsfusion.errors import MissingFileError, UnknownNameError, UserError, WeightsError
from rsfusion.models.backbones.weights import hub_session, hub_unreachable

__all__ = [
    "MACLIP_FORMAT",
    "atomic_torch_save",
    "build_clip",
    "load_clip",
    "load_state_strict",
    "read_weights",
    "save_clip",
    "tiny_clip_config",
]

MACLIP_FORMAT = "rsfusion-maclip"  # the "format" entry of an MA-CLIP file (MACLIP.save)

_FIX_HUB = (
    "download the open_clip weights on a machine with internet (open_clip_model.safetensors "
    "with its open_clip_config.json, or a .pt/.bin state dict), copy them here and pass the "
    "local file (--clip /path/to/file --clip-model <open_clip model name>)"
)


def tiny_clip_config() -> dict[str, Any]:
    """An open_clip CLIP config small enough for tests and the CPU demo (random weights): 32-d
    embeddings, 2-layer ViT (patch 16, 64 px) and 2-layer text encoder with CLIP's vocabulary,
    so open_clip's tokenizer works."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16,
                       "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2},
    }  # fmt: skip


def build_clip(model_cfg: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised open_clip CLIP (or CustomTextCLIP) from its config dict.

    Raises:
        WeightsError: a config open_clip cannot build, or a CoCa one (no LoRA pool support).
    """
    cfg = copy.deepcopy(dict(model_cfg))
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
    if missing:
        raise WeightsError(
            f"open_clip model config lacks {sorted(missing)}; got keys {sorted(cfg)}"
        )
    if "multimodal_cfg" in cfg:
        raise WeightsError("CoCa configs (multimodal_cfg) are not supported by MA-CLIP")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    try:
        return cls(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise WeightsError(f"open_clip cannot build a CLIP from config {cfg}: {err}") from err


def save_clip(model: nn.Module, model_cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write a CLIP as one file :func:`load_clip` reads without ``model_name``:
    ``{"model_cfg", "preprocess_cfg", "state_dict"}`` (``torch.load(weights_only=True)``)."""
    pre = open_clip.get_model_preprocess_cfg(model)
    payload = {
        "model_cfg": copy.deepcopy(dict(model_cfg)),
        "preprocess_cfg": {"mean": list(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                           "std": list(pre.get("std", open_clip.OPENAI_DATASET_STD))},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }  # fmt: skip
    return atomic_torch_save(payload, path)


def load_clip(
    source: str | Path, model_name: str | None = None, model_cfg: Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A CLIP and its open_clip config, from a local file or an open_clip pretrained name.

    Args:
        source: a weights file (open_clip state dict layout: ``.pt``/``.pth``/``.bin``, a
            ``.safetensors`` with an ``open_clip_config.json`` beside it, or a :func:`save_clip`
            file), a folder holding both, or an open_clip name: ``"ViT-B-32:openai"``,
            a tag with ``model_name`` (``"openai"``), or ``"hf-hub:org/repo"``.
        model_name: open_clip architecture name (``"ViT-B-32"``) for a file without a config;
            OpenAI's original weights need the ``-quickgelu`` variant (``"ViT-B-32-quickgelu"``).
        model_cfg: an explicit open_clip config dict instead (e.g. :func:`tiny_clip_config`).

    Returns:
        ``(model, model_cfg)``, the model in eval mode with its preprocessing mean/std set.

    Raises:
        MissingFileError: a path that does not exist.
        UnknownNameError: an unknown open_clip model name or pretrained tag.
        WeightsError: an unreadable file, weights that do not fit the architecture, or a hub
            name that cannot be downloaded (offline): the message says to pass a local file.
    """
    if model_name and model_cfg:
        raise UserError("pass either an open_clip model name or a model config, not both")
    cfg = copy.deepcopy(dict(model_cfg)) if model_cfg else None
    if model_name and cfg is None:
        cfg = _named_config(model_name)
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        path = _weights_in(path)
    if not path.is_file():
        if isinstance(source, Path) or _looks_like_path(text):
            raise MissingFileError(
                f"CLIP weights file not found: {path}. Fix: pass an existing open_clip weights "
                "file (--clip /path/to/file), or an open_clip name such as ViT-B-32:openai"
            )
        return _from_hub(text, model_name)
    state, file_cfg, pre = _read_clip_file(path)
    cfg = cfg or file_cfg
    if cfg is None:
        raise WeightsError(
            f"{path} holds CLIP weights but no architecture. Fix: name it with --clip-model "
            "(an open_clip model name such as ViT-B-32), or put its open_clip_config.json beside it"
        )
    model = build_clip(cfg)
    load_state_strict(model, state, str(path))
    mean, std = (pre or {}).get("mean"), (pre or {}).get("std")
    open_clip.set_model_preprocess_cfg(
        model,
        {"size": model.visual.image_size, "mean": tuple(mean or open_clip.OPENAI_DATASET_MEAN),
         "std": tuple(std or open_clip.OPENAI_DATASET_STD)},
    )  # fmt: skip
    return model.eval(), cfg


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> Path:
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_weights(path: Path, what: str) -> Any:
    """``path`` read as data (:func:`rsfusion.models.checkpoint.read_torch_file`): a corrupt,
    truncated or pickled-object file is one :class:`WeightsError` naming it."""
    from rsfusion.models.checkpoint import read_torch_file

    return read_torch_file(
        path, what, error=WeightsError,
        fix="pass an intact file of plain tensors (re-save it with torch.save(state_dict, ...))",
    )  # fmt: skip


def _read_clip_file(path: Path) -> tuple[dict[str, Tensor], dict | None, dict | None]:
    """(state dict, model config or None, preprocess config or None) of a local CLIP file."""
    cfg = pre = None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorsError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except (SafetensorsError, OSError) as err:
            raise WeightsError(f"{path} cannot be read as safetensors: {err}") from err
        beside = path.with_name("open_clip_config.json")
        if beside.is_file():
            import json

            info = json.loads(beside.read_text(encoding="utf-8"))
            cfg, pre = info.get("model_cfg"), info.get("preprocess_cfg")
    else:
        raw = read_weights(path, "CLIP weights")
    if isinstance(raw, dict) and raw.get("format") == MACLIP_FORMAT:
        raise WeightsError(
            f"{path} is an MA-CLIP file (pre-trained pool), not CLIP weights: load it with "
            "MACLIP.load, or pass the original CLIP weights to --clip"
        )
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        cfg, pre, raw = (
            raw.get("model_cfg") or cfg,
            raw.get("preprocess_cfg") or pre,
            raw["state_dict"],
        )
    if not isinstance(raw, dict) or not any(isinstance(v, Tensor) for v in raw.values()):
        raise WeightsError(f"{path} holds no state dict of tensors; is it a CLIP weights file?")
    state = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, Tensor)}
    return state, cfg, pre


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], label: str) -> None:
    """Strict load with one clear error on missing, unexpected or mis-shaped tensors."""
    state = dict(state)
    own = model.state_dict()
    for key in ("logit_scale", "clip.logit_scale"):  # scalar vs 1-d, as open_clip allows
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = state[key].reshape(own[key].shape)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected),
                           ("of another shape", shapes)):  # fmt: skip
            if keys:
                more = " ..." if len(keys) > 4 else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:4])}{more}")
        raise WeightsError(
            f"{label} does not fit the model ({'; '.join(parts)}). Fix: name the architecture "
            "the weights were trained with (--clip-model) or pass the matching file"
        )
    model.load_state_dict(state, strict=True)


def _looks_like_path(text: str) -> bool:
    if text.startswith("hf-hub:"):
        return False
    suffixes = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    return text.endswith(suffixes) or text.startswith((".", "~", "/")) or os.sep in text


def _weights_in(folder: Path) -> Path:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.pt"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not found:
        raise MissingFileError(f"no CLIP weights file (.safetensors or .bin) in folder {folder}")
    return found[0]


def _named_config(name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise UnknownNameError(
            f"no open_clip model '{name}'"
            + (f"; did you mean {close}?" if close else "")
            + " (open_clip.list_models() lists them)"
        )
    return cfg


def _from_hub(name: str, model_name: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """An open_clip pretrained name; fails at once offline when nothing is cached."""
    from huggingface_hub import try_to_load_from_cache

    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    tag: str | None = None
    quick_gelu = False  # OpenAI's weights were trained with QuickGELU: build it so
    if name.startswith("hf-hub:"):
        arch, repo = name, name[len("hf-hub:") :]
    else:
        if ":" in name:
            arch, tag = name.split(":", 1)
        elif model_name:
            arch, tag = model_name, name
        elif open_clip.get_model_config(name) is not None:
            tags = open_clip.list_pretrained_tags_by_model(name) or ["openai"]
            raise WeightsError(
                f"'{name}' names a CLIP architecture but no weights. Fix: pass a local weights "
                f"file to --clip with --clip-model {name}, or a pretrained name such as "
                f"{name}:{tags[0]}"
            )
        else:
            raise UnknownNameError(
                f"--clip '{name}' is neither an existing file nor an open_clip pretrained name "
                "(e.g. ViT-B-32:openai). Fix: pass a local CLIP weights file"
            )
        _named_config(arch)
        pcfg = open_clip.get_pretrained_cfg(arch, tag)
        if not pcfg:
            raise UnknownNameError(
                f"open_clip has no pretrained '{tag}' for {arch}; its tags: "
                f"{open_clip.list_pretrained_tags_by_model(arch)}"
            )
        repo = str(pcfg.get("hf_hub", "")).rstrip("/")
        quick_gelu = bool(pcfg.get("quick_gelu", False))
        name = f"{arch}:{tag}"
    cached = bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    why = "" if cached else _why_unreachable()
    if why:
        raise WeightsError(f"CLIP weights '{name}' cannot be downloaded: {why}. Fix: {_FIX_HUB}")
    try:
        # the hub found unreachable (once per process): a cached file is read in offline mode
        with hub_session():
            model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu)
        cfg = open_clip.get_model_config(arch)
        cfg["quick_gelu"] = cfg.get("quick_gelu", False) or quick_gelu
    except Exception as err:  # network, missing cache entry, open_clip errors: one message
        raise WeightsError(
            f"CLIP weights '{name}' cannot be downloaded ({type(err).__name__}: "
            f"{_short(err)}). Fix: {_FIX_HUB}"
        ) from err
    return model.eval(), cfg


def _why_unreachable() -> str:
    """Why the hub cannot be reached now ("" if it can), with "nothing is cached": the offline
    flag, or the connection probe :func:`hub_unreachable` made once for this process
    (huggingface_hub itself would retry for about a minute)."""
    why = hub_unreachable()
    return f"{why} and nothing is cached" if why else ""


def _short(err: BaseException, n: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= n else text[: n - 3] + "..."
