"""LoRA (Hu et al., ICLR 2022) as one reusable PEFT part: CPAL's LoRA on the last stage's DCNv3
offset and mask Linears and SegRGB-X's LoRA pool on MA-CLIP (one LoRA per modality).

``y = W x + b + (alpha / r) B A x`` with ``A`` (r x in) Kaiming-uniform and ``B`` (out x r) zero,
so an injected layer starts as the frozen one. A :class:`LoRALinear` holds one adapter or a set
of named ones (per stream: ``("rgb", "x")``; a pool: one per modality), chosen per call:

* ``select="stream"``: the stream the backbone is running (:func:`active_stream`);
* ``select="key"``: the key set by :func:`lora_scope`: one name for the whole batch, or one per
  sample (SegRGB-X picks a modality's LoRA per sample).

:func:`inject_lora` swaps named ``nn.Linear`` modules for :class:`LoRALinear` after the
backbone was frozen; the new ``lora_a`` / ``lora_b`` parameters are marked ``_rsfusion_peft``,
so setting the backbone's mode again leaves them trainable. :func:`fold_lora` merges
``W + (alpha / r) B A`` into a per-adapter weight for prediction, kept outside the state dict
(checkpoints hold the unfolded factors).
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.models.backbones.base import active_stream

__all__ = ["LoRALinear", "fold_lora", "inject_lora", "lora_scope", "unfold_lora"]

Select = Literal["stream", "key"]
_KEY: contextvars.ContextVar[str | tuple[str, ...] | None] = contextvars.ContextVar(
    "rsfusion_lora_key", default=None
)


@contextlib.contextmanager
def lora_scope(key: str | Sequence[str]) -> Iterator[None]:
    """Inside, ``select="key"`` LoRA layers use adapter ``key`` (one name, or one per sample
    along the batch dimension)."""
    token = _KEY.set(key if isinstance(key, str) else tuple(key))
    try:
        yield
    finally:
        _KEY.reset(token)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus low-rank adapters ``(alpha / r) B A`` (Hu et al., eq. 3).

    Args:
        base: the Linear to adapt (kept as ``base``; its parameters are left as they are).
        rank: r.
        alpha: scale numerator (CPAL: rank 8, alpha 1, so 1/8).
        adapters: adapter names; one name: always used.
        select: how a layer with several adapters picks one (module docstring).
        dropout: dropout on the LoRA branch's input.
        activation: ``"sigmoid"`` adds ``sigmoid((alpha / r) B A x)`` instead, as CPAL's code
            does (its ``faithful`` flag: every output shifted by 0.5 at
            initialisation); such a layer cannot be folded and stays factored for prediction.

    Example:
        >>> layer = LoRALinear(nn.Linear(16, 8), rank=4, alpha=1.0)
        >>> x = torch.randn(2, 16)
        >>> bool(torch.equal(layer(x), layer.base(x)))  # B starts at zero
        True
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float = 1.0,
        adapters: Sequence[str] = ("shared",),
        select: Select = "stream",
        dropout: float = 0.0,
        activation: Literal["none", "sigmoid"] = "none",
    ) -> None:
        super().__init__()
        if activation not in ("none", "sigmoid"):
            raise ValueError(f"LoRA activation must be 'none' or 'sigmoid', got {activation!r}")
        self.activation = activation
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not adapters or len(set(adapters)) != len(adapters):
            raise ValueError(f"LoRA adapters must be distinct names, got {list(adapters)}")
        if select not in ("stream", "key"):
            raise ValueError(f"LoRA select must be 'stream' or 'key', got {select!r}")
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.names = tuple(adapters)
        self.select = select
        self.drop = nn.Dropout(dropout)
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for name in self.names:
            a = torch.empty(rank, base.in_features, device=base.weight.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear's weight
            b = torch.zeros(base.out_features, rank, device=base.weight.device)
            self.lora_a[name] = _peft(nn.Parameter(a))
            self.lora_b[name] = _peft(nn.Parameter(b))
        self._folded: dict[str, Tensor] = {}

    @property
    def folded(self) -> bool:
        return bool(self._folded)

    def delta_weight(self, name: str) -> Tensor:
        """``(alpha / r) B A`` of adapter ``name`` (out x in)."""
        return self.scale * (self.lora_b[name] @ self.lora_a[name])

    @property
    def foldable(self) -> bool:
        """Whether the adapters are linear (a sigmoid one cannot be merged into the weight)."""
        return self.activation == "none"

    def fold(self) -> None:
        """Merge every adapter into its own copy of the weight (prediction); the state dict
        keeps the frozen weight and the factors. A sigmoid adapter stays factored."""
        if not self.foldable:
            return
        with torch.no_grad():
            self._folded = {n: self.base.weight + self.delta_weight(n) for n in self.names}

    def unfold(self) -> None:
        """Back to the factored form (after :meth:`fold`)."""
        self._folded = {}

    def _chosen(self) -> str | tuple[str, ...]:
        if len(self.names) == 1:
            return self.names[0]
        key = active_stream() if self.select == "stream" else _KEY.get()
        if key is None:
            where = "a backbone call" if self.select == "stream" else "lora_scope(...)"
            raise RuntimeError(f"LoRA with adapters {self.names} called outside {where}")
        unknown = {key} if isinstance(key, str) else set(key)
        unknown -= set(self.names)
        if unknown:
            raise KeyError(f"no LoRA adapter {sorted(unknown)}; this layer has {self.names}")
        return key

    def _one(self, x: Tensor, name: str) -> Tensor:
        if self._folded:
            return F.linear(x, self._folded[name].to(x.dtype), self.base.bias)
        lora = self.scale * F.linear(F.linear(self.drop(x), self.lora_a[name]), self.lora_b[name])
        return self.base(x) + (torch.sigmoid(lora) if self.activation == "sigmoid" else lora)

    def forward(self, x: Tensor) -> Tensor:
        key = self._chosen()
        if isinstance(key, str):
            return self._one(x, key)
        if len(key) != x.shape[0]:
            raise ValueError(f"{len(key)} LoRA keys for a batch of {x.shape[0]}")
        if len(set(key)) == 1:
            return self._one(x, key[0])
        out = torch.empty(*x.shape[:-1], self.base.out_features, dtype=x.dtype, device=x.device)
        for name in sorted(set(key)):
            rows = torch.tensor([k == name for k in key], device=x.device)
            part = self._one(x[rows], name)
            out[rows] = part.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation != "none" else ""
        return (
            f"rank={self.rank}, alpha={self.alpha}, adapters={self.names}, select={self.select}"
            + act
        )


def _peft(p: nn.Parameter) -> nn.Parameter:
    p._rsfusion_peft = True  # type: ignore[attr-defined]  # Backbone.set_mode leaves it trainable
    return p


def inject_lora(
    module: nn.Module,
    targets: Sequence[str],
    rank: int = 8,
    alpha: float = 1.0,
    adapters: Sequence[str] = ("shared",),
    select: Select = "stream",
    dropout: float = 0.0,
    activation: Literal["none", "sigmoid"] = "none",
) -> list[str]:
    """Replace the ``nn.Linear`` submodules of ``module`` whose qualified names match any of
    ``targets`` (fnmatch patterns, e.g. ``"levels.3.blocks.*.dcn.offset"``) by
    :class:`LoRALinear`; returns the names replaced. Inject after freezing the backbone.

    Raises:
        ValueError: no Linear matches (a misspelled target would silently train nothing).
    """
    names = [
        n
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, t) for t in targets)
    ]
    if not names:
        raise ValueError(f"no nn.Linear of {type(module).__name__} matches {list(targets)}")
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        base = getattr(parent, leaf)
        setattr(parent, leaf, LoRALinear(base, rank, alpha, adapters, select, dropout, activation))
    return names


def fold_lora(module: nn.Module) -> int:
    """Fold every foldable :class:`LoRALinear` in ``module`` (prediction); returns how many."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear) and m.foldable]
    for layer in layers:
        layer.fold()
    return len(layers)


def unfold_lora(module: nn.Module) -> int:
    """Undo :func:`fold_lora`; returns how many layers."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.unfold()
    return len(layers)
