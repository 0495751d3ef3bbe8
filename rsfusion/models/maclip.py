"""MA-CLIP: a frozen CLIP with a LoRA pool, one LoRA per X modality (SegRGB-X, arXiv 2603.28023,
Sec. III-B, Fig. 3, eq. 1).

Both CLIP encoders stay frozen; only the pool is trained, contrastively between caption
embeddings ``S^t`` (repeated) and the image embeddings ``{S^r, S^m}`` of an (RGB, X) pair, where
the pair's modality selects one LoRA for BOTH passes (paper: "for each pair, the corresponding
LoRA module is selected from the pool ... outputs both S^r and S^m"). After pre-training the
whole model is frozen and provides ``S^r`` and ``S^m`` to the segmentation backbone.

Where the LoRA goes. open_clip's image blocks use ``nn.MultiheadAttention``, whose packed
``in_proj_weight`` is not an ``nn.Linear``. :class:`LoRAAttention` replaces it by the same
attention with separate ``q``, ``k``, ``v`` Linears (the frozen weights copied, outputs equal),
and :func:`rsfusion.models.peft.lora.inject_lora` adapts ``q`` and ``v`` of every image block,
following Hu et al. (LoRA, ICLR 2022; the paper cites it without naming layers): attention
weights only, MLPs frozen (their Sec. 4.2), and W_q with W_v the best pair for a fixed budget
(their Sec. 7.1, Tab. 5). The text encoder is untouched. ``targets`` may add ``k`` and ``out``
(the output projection).

Inputs arrive as segmentation batches carry them (normalised, any size, X with 1 or 3 channels).
:meth:`MACLIP.prepare` resizes each image to CLIP's size (the whole view, bilinear with
antialiasing, no crop), maps every channel of every sample to [0, 1] by its own min-max, then
applies CLIP's mean/std. The min-max undoes any positive per-channel affine normalisation
(ImageNet, 'unit', 'tf' RGB; 'raster_minmax', 'dataset', 'scale' X) exactly up to that channel's
contrast stretch, so pre-training and segmentation give the same embeddings whatever the
pipeline's normalisation is, without telling MA-CLIP about it.

CLIP loading (:func:`load_clip`, :func:`save_clip`, :func:`build_clip`, :func:`tiny_clip_config`)
lives in :mod:`rsfusion.models.clip_io` and is re-exported here.

Example:
    >>> clip = build_clip(tiny_clip_config())
    >>> model = MACLIP(clip, tiny_clip_config(), pool=["depth", "thermal"], rank=4)
    >>> rgb, x = torch.rand(2, 3, 40, 48), torch.rand(2, 1, 40, 48)
    >>> with torch.no_grad():
    ...     s_r, s_m = model.encode(rgb, x, ["depth", "thermal"])
    >>> tuple(s_r.shape), round(float(s_m.norm(dim=-1)[0]), 4)
    ((2, 32), 1.0)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.errors import ConfigError, MissingFileError, UnknownNameError, UserError, WeightsError
from rsfusion.models.clip_io import (
    MACLIP_FORMAT,
    atomic_torch_save,
    build_clip,
    load_clip,
    load_state_strict,
    read_weights,
    save_clip,
    tiny_clip_config,
)
from rsfusion.models.peft.lora import LoRALinear, inject_lora, lora_scope

__all__ = [
    "MACLIP",
    "MODALITY_POOL",
    "LoRAAttention",
    "build_clip",
    "load_clip",
    "pool_key",
    "save_clip",
    "tiny_clip_config",
]

#: Card X-modality names -> LoRA pool keys (the paper's five modalities plus the remote-sensing
#: and DeLiVER ones); a pool key maps to itself.
MODALITY_POOL: dict[str, str] = {
    "depth": "depth",
    "hha": "depth",
    "thermal": "thermal",
    "thermal_raw": "thermal",
    "infrared": "thermal",  # FMB's infrared camera is thermal (LWIR)
    "event": "event",
    "events": "event",
    "aolp": "polarization",
    "dolp": "polarization",
    "polarization": "polarization",
    "disparity": "light_field",
    "light_field": "light_field",
    "dsm": "dsm",
    "ndsm": "dsm",
    "dtm": "dsm",
    "lidar": "lidar",
    "nir": "nir",  # MCubeS near-infrared: reflected light, not thermal
}
FORMAT = MACLIP_FORMAT
VERSION = 1
_TARGETS = {"q": "q", "k": "k", "v": "v", "out": "out_proj"}
_NO_LORA: contextvars.ContextVar[bool] = contextvars.ContextVar("maclip_no_lora", default=False)


def pool_key(modality: str) -> str:
    """The LoRA pool key of a card's X modality.

    Raises:
        UnknownNameError: a modality without a pool entry (lists the known names).

    UrbanLF's sub-aperture views (``view_<u>_<v>``, the paper's "first sub-aperture image")
    are light field.

    Example:
        >>> pool_key("hha"), pool_key("aolp"), pool_key("ndsm"), pool_key("view_1_1")
        ('depth', 'polarization', 'dsm', 'light_field')
    """
    if str(modality).startswith("view_"):
        return "light_field"
    if modality not in MODALITY_POOL:
        close = difflib.get_close_matches(str(modality), MODALITY_POOL, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownNameError(
            f"MA-CLIP has no LoRA pool entry for modality '{modality}'{hint}; known modalities: "
            f"{sorted(MODALITY_POOL)}"
        )
    return MODALITY_POOL[modality]


class LoRAAttention(nn.Module):
    """``nn.MultiheadAttention`` (self-attention, batch first) with separate ``q``/``k``/``v``
    Linears, so LoRA can adapt W_q and W_v (Hu et al., Sec. 4.2); same outputs as ``mha``.

    A called drop-in for ``mha(q, k, v, need_weights=False, attn_mask=m)``; returns
    ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None):
            raise WeightsError("MA-CLIP needs batch-first self-attention blocks with one in_proj")
        if mha.add_zero_attn:
            raise WeightsError("MA-CLIP does not support attention with add_zero_attn")
        dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        weight, bias = mha.in_proj_weight.detach(), mha.in_proj_bias
        for i, name in enumerate(("q", "k", "v")):
            layer = nn.Linear(dim, dim, bias=bias is not None, device=weight.device,
                              dtype=weight.dtype)  # fmt: skip
            with torch.no_grad():
                layer.weight.copy_(weight[i * dim : (i + 1) * dim])
                if bias is not None:
                    layer.bias.copy_(bias.detach()[i * dim : (i + 1) * dim])
            setattr(self, name, layer)
        self.out_proj = mha.out_proj

    @staticmethod
    def _proj(layer: nn.Module, x: Tensor) -> Tensor:
        if isinstance(layer, LoRALinear) and _NO_LORA.get():
            return layer.base(x)
        return layer(x)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        batch, tokens, dim = query.shape
        heads = self.num_heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)

        q = split(self._proj(self.q, query))
        k = split(self._proj(self.k, query if key is None else key))
        v = split(self._proj(self.v, query if value is None else value))
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True = masked out
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                attn_mask, float("-inf")
            )
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self._proj(self.out_proj, out), None


class MACLIP(nn.Module):
    """Modality-aware CLIP (SegRGB-X Sec. III-B, Fig. 3): frozen CLIP, LoRA pool on its image
    encoder, trained by eq. 1 (:meth:`contrastive_loss`).

    Args:
        clip: an open_clip CLIP with a ViT image encoder (e.g. from :func:`load_clip`).
        model_cfg: its open_clip config (stored by :meth:`save`).
        pool: the pool's modalities (card X names or pool keys; one LoRA per pool key).
        rank, alpha: LoRA rank and scale numerator (update ``(alpha / rank) B A``).
        targets: which image-attention projections get LoRA: ``q``, ``k``, ``v``, ``out``.
    """

    def __init__(
        self,
        clip: nn.Module,
        model_cfg: Mapping[str, Any],
        pool: Sequence[str],
        rank: int = 8,
        alpha: float = 8.0,
        targets: Sequence[str] = ("q", "v"),
    ) -> None:
        super().__init__()
        keys = tuple(sorted({pool_key(m) for m in pool}))
        if not keys:
            raise UserError("MA-CLIP needs at least one modality in its LoRA pool")
        unknown = [t for t in targets if t not in _TARGETS]
        if unknown or not targets:
            raise UnknownNameError(f"LoRA targets {list(targets)}: choose from {list(_TARGETS)}")
        blocks = getattr(getattr(clip.visual, "transformer", None), "resblocks", None)
        if blocks is None or not all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
            raise WeightsError(
                f"MA-CLIP needs an open_clip ViT image encoder with standard attention blocks; "
                f"this CLIP's image encoder is {type(clip.visual).__name__}. Fix: choose a ViT "
                "model (e.g. ViT-B-32, ViT-B-16)"
            )
        self.clip = clip
        self.model_cfg = copy.deepcopy(dict(model_cfg))
        self.lora = {"rank": int(rank), "alpha": float(alpha), "targets": list(targets)}
        self.meta: dict[str, Any] = {}
        for block in blocks:
            block.attn = LoRAAttention(block.attn)
        for p in clip.parameters():
            p.requires_grad_(False)
        patterns = [f"transformer.resblocks.*.attn.{_TARGETS[t]}" for t in targets]
        inject_lora(clip.visual, patterns, rank, alpha, adapters=keys, select="key")
        self._keys = keys
        pre = open_clip.get_model_preprocess_cfg(clip)
        mean = pre.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pre.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("image_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.clip.eval()

    @property
    def embed_dim(self) -> int:
        """Width of ``S^t``, ``S^r`` and ``S^m``."""
        return int(self.model_cfg["embed_dim"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """The pool's keys (one LoRA each), sorted."""
        return self._keys

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.clip.visual.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def train(self, mode: bool = True) -> MACLIP:
        """Sets ``self.training`` only: the CLIP (LoRA layers included, whose dropout is 0)
        always runs in eval mode, so no patch or attention dropout while the pool trains."""
        super().train(mode)
        self.clip.eval()
        return self

    def freeze(self) -> MACLIP:
        """Everything frozen (``requires_grad`` False) and in eval mode: the segmentation use."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def prepare(self, images: Tensor) -> Tensor:
        """Batch images (any normalisation and size, 1 or 3 channels) -> CLIP input: resize the
        whole view, per-sample per-channel min-max to [0, 1], CLIP mean/std (module docstring)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(
                f"MA-CLIP takes (B, 1 or 3, H, W) images, got shape {tuple(images.shape)}; "
                "choose an X encoding with 1 or 3 channels (data.x_encoding)"
            )
        images = torch.nan_to_num(images.float(), nan=0.0, posinf=0.0, neginf=0.0)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(
                images, self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        lo = images.amin(dim=(2, 3), keepdim=True)
        hi = images.amax(dim=(2, 3), keepdim=True)
        unit = (images - lo) / (hi - lo).clamp_min(1e-6)
        return (unit - self.image_mean) / self.image_std

    def _keys_of(self, modality: Sequence[str | None], batch: int) -> list[str | None]:
        if len(modality) != batch:
            raise ValueError(f"{len(modality)} modality names for a batch of {batch}")
        keys = [pool_key(m) if m else None for m in modality]
        missing = sorted({k for k in keys if k is not None and k not in self._keys})
        if missing:
            raise UnknownNameError(
                f"this MA-CLIP has no LoRA for {missing}; its pool holds {list(self._keys)}. "
                "Fix: pre-train MA-CLIP on a dataset with that modality"
            )
        return keys

    def _encode_images(self, images: Tensor, keys: list[str | None]) -> Tensor:
        with_lora = [i for i, k in enumerate(keys) if k is not None]
        if len(with_lora) == len(keys):
            with lora_scope([k for k in keys if k is not None]):
                return self.clip.encode_image(images, normalize=True)
        if not with_lora:
            with _plain():
                return self.clip.encode_image(images, normalize=True)
        rows = torch.tensor([k is not None for k in keys], device=images.device)
        out = torch.empty(len(keys), self.embed_dim, device=images.device, dtype=images.dtype)
        out[rows] = self._encode_images(images[rows], [k for k in keys if k is not None])
        out[~rows] = self._encode_images(images[~rows], [None] * int((~rows).sum()))
        return out

    def encode(
        self, rgb: Tensor, x: Tensor, modality: Sequence[str | None]
    ) -> tuple[Tensor, Tensor]:
        """``S^r`` and ``S^m`` (B, embed_dim), L2-normalised; sample i's modality picks its LoRA
        for both its RGB and X pass (``None`` or ``""``: plain CLIP, no LoRA).

        Raises:
            UnknownNameError: a modality without a LoRA in this pool.
        """
        if rgb.shape[0] != x.shape[0]:
            raise ValueError(f"RGB batch {rgb.shape[0]} and X batch {x.shape[0]} differ")
        keys = self._keys_of(modality, rgb.shape[0])
        images = torch.cat([self.prepare(rgb), self.prepare(x)])
        s = self._encode_images(images, keys + keys)
        return s[: rgb.shape[0]], s[rgb.shape[0] :]

    def encode_text(self, captions: Sequence[str]) -> Tensor:
        """``S^t`` (B, embed_dim), L2-normalised, from the frozen text encoder."""
        tokens = _tokenizer(_text_key(self.model_cfg["text_cfg"]))(list(captions))
        return self.clip.encode_text(tokens.to(self.image_mean.device), normalize=True)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's temperature ``exp(t)``, frozen with the rest of CLIP (capped at 100)."""
        return self.clip.logit_scale.detach().exp().clamp(max=100.0)

    def contrastive_loss(self, s_t: Tensor, s_r: Tensor, s_m: Tensor) -> Tensor:
        """Eq. 1, ``L_contrastive({S^t, S^t}, {S^r, S^m})``: CLIP's symmetric InfoNCE (with its
        frozen logit scale) of each image set against the captions, paired position-wise:
        ``(CLIP(S^r, S^t) + CLIP(S^m, S^t)) / 2``. Stacking the repeated captions into one
        2B x 2B matrix instead would make each caption its own negative (an irreducible ln 2).
        """
        return 0.5 * (self._clip_loss(s_r, s_t) + self._clip_loss(s_m, s_t))

    def _clip_loss(self, image: Tensor, text: Tensor) -> Tensor:
        logits = self.logit_scale * image @ text.t()
        labels = torch.arange(image.shape[0], device=image.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """One self-contained file (CLIP config, preprocessing, pool, LoRA settings, weights,
        ``meta``) that ``torch.load(weights_only=True)`` reads; written atomically."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "model_cfg": copy.deepcopy(self.model_cfg),
            "preprocess_cfg": {"mean": self.image_mean.flatten().tolist(),
                               "std": self.image_std.flatten().tolist()},
            "pool": list(self._keys),
            "lora": dict(self.lora),
            "meta": dict(meta if meta is not None else self.meta),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }  # fmt: skip
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | Path, frozen: bool = True) -> MACLIP:
        """Read :meth:`save`'s file; frozen and in eval mode unless ``frozen=False``.

        Raises:
            MissingFileError: no such file.
            WeightsError: not an MA-CLIP file, or a corrupt or inconsistent one.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"MA-CLIP file not found: {path}. Fix: pre-train one with "
                "python scripts/pretrain_maclip.py ... --out DIR and pass DIR/maclip.pt"
            )
        raw = read_weights(path, "an MA-CLIP file")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            what = "CLIP weights" if isinstance(raw, dict) and "state_dict" in raw else "no MA-CLIP"
            raise WeightsError(
                f"{path} holds {what}, not an MA-CLIP file. Fix: pass the maclip.pt written by "
                "python scripts/pretrain_maclip.py"
            )
        if raw.get("version") != VERSION:
            raise WeightsError(f"{path}: MA-CLIP file version {raw.get('version')} != {VERSION}")
        try:
            cfg, pool, lora, state = raw["model_cfg"], raw["pool"], raw["lora"], raw["state_dict"]
            clip = build_clip(cfg)
            pre = raw.get("preprocess_cfg") or {}
            open_clip.set_model_preprocess_cfg(
                clip, {"size": clip.visual.image_size, "mean": tuple(pre["mean"]),
                       "std": tuple(pre["std"])},
            )  # fmt: skip
            model = cls(clip, cfg, pool, lora["rank"], lora["alpha"], lora["targets"])
        except (KeyError, TypeError) as err:
            raise WeightsError(
                f"{path}: incomplete MA-CLIP file ({type(err).__name__}: {err})"
            ) from err
        load_state_strict(model, state, str(path))
        model.meta = dict(raw.get("meta") or {})
        return model.freeze() if frozen else model


@contextlib.contextmanager
def _plain() -> Iterator[None]:
    """Inside, :class:`LoRAAttention` bypasses its LoRA (plain CLIP)."""
    token = _NO_LORA.set(True)
    try:
        yield
    finally:
        _NO_LORA.reset(token)


def _text_key(text_cfg: Mapping[str, Any]) -> tuple[str | None, int]:
    return text_cfg.get("hf_tokenizer_name"), int(text_cfg.get("context_length", 77))


@functools.lru_cache(maxsize=4)
def _tokenizer(key: tuple[str | None, int]) -> Any:
    hf_name, context = key
    if hf_name:
        return open_clip.tokenizer.HFTokenizer(hf_name, context_length=context)
    return open_clip.SimpleTokenizer(context_length=context)
