"""Load pre-trained ViT weights (timm or official facebookresearch/dinov2 layout) into timm ViTs.

Weights come from a local file (.pth / .pt / .bin / .ckpt, or .safetensors) or from a timm /
``hf-hub:`` model name. Whether the hub can be used is decided once per process
(:func:`hub_unreachable`: ``HF_HUB_OFFLINE``, else one short connection probe); offline, a name
without a local copy fails at once with :class:`WeightsUnavailable`, which says how to fix it,
and a cached copy is read with huggingface_hub in offline mode (:func:`hub_session`: no
request, no retries). Official DINOv2 keys are renamed to
timm's (``register_tokens`` -> ``reg_token``, chunked ``blocks.{chunk}.{i}`` -> ``blocks.{i}``,
SwiGLU ``w12``/``w3`` -> ``fc1``/``fc2``), wrappers (``{"teacher": {"backbone.…"}}``) are
unwrapped and the position embedding is resized to the model's grid.

Example:
    >>> import timm
    >>> model = timm.create_model("vit_small_patch14_dinov2", img_size=224)
    >>> report = load_vit_weights(model, "dinov2_vits14_pretrain.pth")  # doctest: +SKIP
    >>> report.resized  # doctest: +SKIP
    ['pos_embed: grid 37x37 -> 16x16 (bicubic, class position kept)']
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from rsfusion.errors import WeightsError, WeightsUnavailable

__all__ = [
    "HUB_PROBE_TIMEOUT",
    "LoadReport",
    "WeightsUnavailable",
    "hub_session",
    "hub_unreachable",
    "load_vit_weights",
    "tensors_digest",
    "weights_digest",
]

FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_WRAPPERS = ("teacher", "model", "state_dict", "module")  # checkpoint keys holding the weights
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")  # DINOv2 BlockChunk: blocks.{chunk}.{global i}.
_VIT_NAMES = {
    192: "ViT-Ti",
    384: "ViT-S",
    768: "ViT-B",
    1024: "ViT-L",
    1280: "ViT-H",
    1536: "ViT-g",
}
_NAME_PREFIXES = ("hf-hub:", "local-dir:")  # timm model-name schemes
_FIX = "set model.weights=/path/to/file.pth"
_RESAVE = "re-save the weights alone: torch.save(checkpoint['model'], 'weights.pth')"


@dataclass
class LoadReport:
    """What :func:`load_vit_weights` did.

    Attributes:
        source: the file path or hub name the weights came from.
        loaded: number of model tensors set from the source.
        missing: model keys the source did not provide (left as initialised).
        unexpected: source keys dropped (no place in the model, e.g. ``mask_token``, heads).
        resized: one line per tensor resized to fit (the position embedding grid).
        sha256: :func:`tensors_digest` of the loaded tensors as they sit in the model.
    """

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    sha256: str = ""

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"loaded {self.loaded} tensors from {self.source} (sha256 {self.sha256[:12]})"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} dropped: {_first(self.unexpected)}")
        parts.extend(self.resized)
        return "; ".join(parts)


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the tensors sorted by name: name, shape, dtype and raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """:func:`tensors_digest` of a module's state dict (parameters and persistent buffers)."""
    return tensors_digest(module.state_dict())


def load_vit_weights(
    model: VisionTransformer, source: str | Path, *, strict: bool = True
) -> LoadReport:
    """Load weights from a local file or a timm / hub name into a timm ViT, in place.

    Args:
        model: the timm VisionTransformer to fill.
        source: a file path, or a timm model name (``vit_large_patch14_dinov2.lvd142m``,
            ``hf-hub:timm/...``) whose pre-trained weights timm can fetch or finds cached.
        strict: raise when a model key is not in the source, a shape does not fit, or the
            source's width, depth, patch size or register count differs from the model's.
            A source of another width is refused either way.

    Returns:
        The :class:`LoadReport`.

    Raises:
        WeightsUnavailable: the file does not exist, or the hub name cannot be fetched.
        WeightsError: the file cannot be read as data, or the weights do not fit the model
            (the message names both models' dims).
    """
    path = Path(source).expanduser()
    if path.is_file():
        raw, label = _read_file(path), str(path)
    elif path.is_dir():
        raise WeightsUnavailable(f"{path} is a folder: point at the weights file inside it.")
    elif _looks_like_path(source):
        raise WeightsUnavailable(f"weights file not found: {path}. Fix: {_FIX} (an existing file).")
    else:
        raw, label = _hub_state_dict(str(source)), str(source)
    tensors = _unwrap(raw, label)
    renamed, origin, official = _to_timm(tensors)
    hint = _mismatch_hint(renamed, model)
    width = _width(renamed)
    if hint and (strict or (width is not None and width != model.embed_dim)):
        raise WeightsError(f"{label} does not fit the model: {hint}")
    expected = model.state_dict()
    state = {k: v for k, v in renamed.items() if k in expected}
    used = {origin[k] for k in state}
    dropped = [k for k in tensors if k not in used]
    resized = _fit_pos_embed(state, model, official)
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad and strict:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad]
        raise WeightsError(
            f"{label}: shapes do not fit: {_first(shapes, 3)}. {hint or ''}".rstrip()
        )
    for k in bad:
        dropped.append(k)
        del state[k]
    missing = [k for k in expected if k not in state]
    if missing and strict:
        raise WeightsError(
            f"{label}: {len(missing)} model keys not in the file: {_first(missing)}. "
            + (hint or _layout_hint(tensors))
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    now = model.state_dict()
    digest = tensors_digest({k: now[k] for k in state})
    return LoadReport(label, len(state), missing, dropped, resized, digest)


def read_source(
    source: str | Path, from_hub: Callable[[str], object] | None = None
) -> tuple[dict[str, Tensor], str]:
    """The tensors of a weights source (a local file, or a hub name read by ``from_hub``,
    default :func:`_hub_state_dict`), wrappers removed, and its label for messages."""
    path = Path(source).expanduser()
    if path.is_file():
        return _unwrap(_read_file(path), str(path)), str(path)
    if path.is_dir():
        raise WeightsUnavailable(f"{path} is a folder: point at the weights file inside it.")
    if _looks_like_path(source):
        raise WeightsUnavailable(f"weights file not found: {path}. Fix: {_FIX} (an existing file).")
    name = str(source)
    return _unwrap((from_hub or _hub_state_dict)(name), name), name


def _first(names: list[str], n: int = 5) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _looks_like_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    if source.startswith(_NAME_PREFIXES):
        return False
    return source.endswith(FILE_SUFFIXES) or source.startswith((".", "~", "/")) or os.sep in source


def _read_file(path: Path) -> object:
    """A weights file as data: safetensors, or torch's format read by the package's one safe
    reader (:func:`rsfusion.models.checkpoint.read_torch_file`: pickled objects never run)."""
    from rsfusion.models.checkpoint import read_torch_file

    if path.suffix != ".safetensors":
        return read_torch_file(path, "weights", fix=_RESAVE)
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - safetensors ships with timm
        raise ImportError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
    try:
        return load_file(str(path))
    except Exception as err:  # truncated, corrupt, not safetensors: one clear message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise WeightsError(f"{path} cannot be read as safetensors ({first}); {_RESAVE}") from None


def _unwrap(raw: object, label: str) -> dict[str, Tensor]:
    """Descend through {"teacher"|"model"|"state_dict"|"module": ...} to the tensors."""
    while isinstance(raw, Mapping):
        inner = next((raw[k] for k in _WRAPPERS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    tensors = {}
    if isinstance(raw, Mapping):
        tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"{label}: no tensors found (expected a state dict, maybe wrapped).")
    from rsfusion.models.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(tensors)
    if bad:
        raise WeightsError(
            f"{label}: {len(bad)} of {len(tensors)} tensors hold NaN or inf (e.g. {bad[0]}); "
            "these weights are broken: use another copy of the file"
        )
    return tensors


def _to_timm(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], bool]:
    """Rename to timm keys: (renamed tensors, timm name -> source key, official layout?)."""
    anchor = "patch_embed.proj.weight"
    anchors = sorted((k for k in tensors if k.endswith(anchor)), key=len)
    teacher = [k for k in anchors if "teacher" in k]
    prefix = (teacher or anchors or [anchor])[0][: -len(anchor)]
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    official = False
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        official |= name in ("mask_token", "register_tokens") or bool(_CHUNKED.match(name))
        name = _CHUNKED.sub(r"blocks.\1.", name)
        name = name.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        name = "reg_token" if name == "register_tokens" else name
        renamed[name], origin[name] = value, key
    return renamed, origin, official


def _fit_pos_embed(state: dict[str, Tensor], model: VisionTransformer, official: bool) -> list[str]:
    """Move class positions to the model's convention and resize the patch grid (bicubic)."""
    pos = state.get("pos_embed")
    if pos is None or getattr(model, "pos_embed", None) is None:
        return []
    want_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    n, grid = pos.shape[1], tuple(model.patch_embed.grid_size)
    if official:
        have_prefix = 1  # official DINOv2: one class position, registers have none
    elif n == model.pos_embed.shape[1]:
        have_prefix = want_prefix
    else:
        have_prefix = next((p for p in (want_prefix, 1, 0) if _is_square(n - p)), None)
    if have_prefix is None or (
        n - have_prefix != grid[0] * grid[1] and not _is_square(n - have_prefix)
    ):
        raise WeightsError(
            f"pos_embed with {n} positions is not a square grid plus class positions"
        )
    prefix, patches = pos[:, :have_prefix], pos[:, have_prefix:]
    if have_prefix == 1 and want_prefix == 0 and "cls_token" in state:
        state["cls_token"] = state["cls_token"] + prefix  # timm no_embed_class: fold it in
        prefix = prefix[:, :0]
    elif have_prefix == 0 and want_prefix == 1:
        prefix = pos.new_zeros(1, 1, pos.shape[2])
    elif have_prefix != want_prefix:
        raise WeightsError(f"pos_embed has {have_prefix} class positions, the model {want_prefix}")
    notes = []
    if patches.shape[1] != grid[0] * grid[1]:
        side, c = math.isqrt(patches.shape[1]), patches.shape[2]
        image = patches.reshape(1, side, side, c).permute(0, 3, 1, 2).float()
        image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=True)
        patches = image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], c).to(pos.dtype)
        notes.append(
            f"pos_embed: grid {side}x{side} -> {grid[0]}x{grid[1]} (bicubic, class position kept)"
        )
    state["pos_embed"] = torch.cat([prefix, patches], dim=1)
    return notes


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _width(state: dict[str, Tensor]) -> int | None:
    return next((state[k].shape[-1] for k in ("cls_token", "norm.weight") if k in state), None)


def _dims(embed: int | None, depth: int, patch: int | None, regs: int) -> str:
    name = _VIT_NAMES.get(embed or 0, "ViT")
    size = f"/{patch}" if patch else ""
    return f"{name}{size} (embed {embed}, depth {depth}, {regs} registers)"


def _mismatch_hint(state: dict[str, Tensor], model: VisionTransformer) -> str | None:
    """'this file is ViT-B/14 (...), the config asks for ViT-L/14 (...)' when the dims differ."""
    width = _width(state)
    proj = state.get("patch_embed.proj.weight")
    patch = proj.shape[-1] if proj is not None and proj.ndim == 4 else None
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    regs = state["reg_token"].shape[1] if "reg_token" in state else 0
    m_patch = model.patch_embed.patch_size[0]
    have = (width, depth, patch, regs)
    want = (model.embed_dim, len(model.blocks), m_patch, model.num_reg_tokens)
    if (
        width is None
        or have == want
        or (patch is None and have[:2] + have[3:] == want[:2] + want[3:])
    ):
        return None
    fix = "set model.backbone to the file's variant or point model.weights at a matching file."
    if regs != model.num_reg_tokens:
        fix = f"the file has {regs} register tokens: use a *_reg{regs}_* backbone, or {fix}"
    return f"this file is {_dims(*have)}, the config asks for {_dims(*want)}. Fix: {fix}"


def _layout_hint(tensors: dict[str, Tensor]) -> str:
    if any("patch_embeddings.projection" in k for k in tensors):
        return (
            "This looks like a HuggingFace transformers checkpoint; use the timm or official file."
        )
    return f"Fix: {_FIX} pointing at a timm or official DINOv2 checkpoint of this model."


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in ("1", "on", "yes", "true") or bool(constants.HF_HUB_OFFLINE)


#: seconds the connection probe of :func:`hub_unreachable` waits (name lookup included)
HUB_PROBE_TIMEOUT = 2.0
_PROBES: dict[tuple[str, int], str] = {}  # (host, port) -> why unreachable ("" if reachable)


def hub_unreachable(url: str | None = None, timeout: float = HUB_PROBE_TIMEOUT) -> str:
    """Why pre-trained weights cannot be downloaded now ("" when they can), decided once.

    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: offline. Otherwise one TCP connection
    to the Hugging Face endpoint (``HF_ENDPOINT``, default huggingface.co; or the host of
    ``url``), through the HTTPS proxy when one is set, bounded by ``timeout`` seconds name
    lookup included; its answer is kept for the rest of the process, so a run that loads
    several weights files probes once. Without this, huggingface_hub retries each file for
    about 23 s before giving up.
    """
    if _offline():
        return "HF_HUB_OFFLINE is set"
    host, port, via = _probe_address(url)
    if (host, port) not in _PROBES:
        _PROBES[(host, port)] = _probe(host, port, timeout, via)
    return _PROBES[(host, port)]


def _probe_address(url: str | None) -> tuple[str, int, str]:
    """(host, port) to connect to for ``url`` (default: the hub endpoint), and a note naming
    the proxy when the connection goes through one."""
    from huggingface_hub import constants

    target = urlparse(url or constants.ENDPOINT)
    host = target.hostname or "huggingface.co"
    port = target.port or (80 if target.scheme == "http" else 443)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme or "https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        where = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if where.hostname:
            return where.hostname, where.port or 80, f" through the proxy {where.hostname}"
    return host, port, ""


def _probe(host: str, port: int, timeout: float, via: str = "") -> str:
    """Connect once to ``host:port`` (in a thread, so a hanging name lookup is bounded too)."""
    answer: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append("")
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
            answer.append(f"{host} cannot be reached{via} ({reason})")

    thread = threading.Thread(target=connect, name="rsfusion-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return f"{host} did not answer{via} within {timeout:g} s"
    return answer[0]


@contextlib.contextmanager
def hub_session(url: str | None = None) -> Iterator[str]:
    """Run hub downloads as decided by :func:`hub_unreachable` (its answer is yielded): when
    the hub cannot be reached, huggingface_hub runs in offline mode inside the block, so a
    cached file is read at once and a missing one fails at once (no request, no retries)."""
    from huggingface_hub import constants

    why = hub_unreachable(url)
    before = constants.HF_HUB_OFFLINE
    if why:
        constants.HF_HUB_OFFLINE = True
    try:
        yield why
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_failure(name: str, err: BaseException, why: str) -> str:
    """Why a hub download of ``name`` failed, in one clause: the unreachable hub (``why``, when
    :func:`hub_session` ran offline and the file was not cached) or the error itself."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if why and isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return f"{why}, and {name!r} is not in the local cache"
    return f"{type(err).__name__}: {_short(err)}"


def _short(err: BaseException, n: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _hub_cached(name: str) -> bool:
    """Whether timm would find ``name``'s weights without the network (a cheap check)."""
    from huggingface_hub import try_to_load_from_cache

    files = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
    if name.startswith("local-dir:"):
        return True  # a local folder: timm reads it without the network
    if name.startswith("hf-hub:"):
        repo, _, rev = name[len("hf-hub:") :].partition("@")
        cfg_file = try_to_load_from_cache(repo, "config.json", revision=rev or None)
        hits = [try_to_load_from_cache(repo, f, revision=rev or None) for f in files]
        return isinstance(cfg_file, str) and any(isinstance(h, str) for h in hits)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.file and Path(cfg.file).is_file():
        return True
    if cfg.hf_hub_id:
        repo, _, rev = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else files
        if any(
            isinstance(try_to_load_from_cache(repo, f, revision=rev or None), str) for f in names
        ):
            return True
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        return cached.is_file()
    return False


def _hub_message(name: str, why: str) -> str:
    url = ""
    if not name.startswith(_NAME_PREFIXES) and (cfg := timm.models.get_pretrained_cfg(name)):
        url = cfg.url or (f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else "")
    where = f" (e.g. from {url})" if url else ""
    return (
        f"pre-trained weights for {name!r} are unavailable: no file was found ({why}). "
        f"Fix: download the weights file on a machine with internet{where}, copy it here and "
        f"{_FIX}."
    )


def _hub_state_dict(name: str) -> dict[str, Tensor]:
    """The weights timm.create_model(name, pretrained=True) would load; fails at once when the
    hub cannot be reached (:func:`hub_unreachable`) and nothing is cached."""
    if not name.startswith(_NAME_PREFIXES) and not timm.is_model(name):
        raise WeightsUnavailable(
            f"{name!r} is neither an existing weights file nor a timm model name. Fix: {_FIX}."
        )
    url = None
    if not name.startswith(_NAME_PREFIXES) and (cfg := timm.models.get_pretrained_cfg(name)):
        url = None if cfg.hf_hub_id or not cfg.url else cfg.url  # timm's own download URL
    why = hub_unreachable(url)
    if why and not _hub_cached(name):
        raise WeightsUnavailable(_hub_message(name, f"{why}, and nothing is cached"))
    try:
        with hub_session(url) as why:
            hub_model = timm.create_model(name, pretrained=True)
    except Exception as e:  # network, missing cache entry, timm errors: one clear message
        raise WeightsUnavailable(_hub_message(name, hub_failure(name, e, why))) from e
    return hub_model.state_dict()
