"""LightHamHead: the Hamburger decoder with NMF, CPAL-T's head (CPAL, TCSVT 2025).

Geng et al., "Is Attention Better Than Matrix Decomposition?" (ICLR 2021), as mmsegmentation's
``LightHamHead`` (SegNeXt's light Hamburger head), which CPAL's ``configs/_base_/models/
hamburger.py`` selects. mmseg's behaviour is kept:

* ``NMF2D`` overrides the base class's ``inv_t = 100`` with ``inv_t = 1`` (the softmax that
  initialises the coefficients runs at temperature 1); ``inv_t`` here defaults to 1.
* the multiplicative updates are differentiated through every step (the HamNet paper's
  one-step gradient, ``@torch.no_grad()`` on the iterations, is commented out in mmseg):
  ``one_step_grad=True`` gives the paper's variant.
* with ``rand_init`` the bases are redrawn (uniform, L2-normalised over D) on every call, in
  evaluation too: evaluation is deterministic only under a fixed seed. ``eval_seed`` draws the
  evaluation bases from a private generator (same result on every call, global RNG untouched).

The NMF runs in float32 (autocast off) whatever the input dtype.

CPAL's own config differs from the mmseg/SegNeXt defaults in two ways: it feeds all four
stages (``in_index=[0, 1, 2, 3]``, in_channels 320/640/1280/2560) and, although it defines
``ham_norm_cfg = GN(32)``, passes ``norm_cfg = SyncBN`` to the head. The defaults here are the
mmseg/SegNeXt ones (last three levels, GroupNorm 32); ``in_index=(0, 1, 2, 3), norm="bn"``
reproduces the authors' config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.models.heads.upernet import resize_to

Norm = Literal["gn", "bn"]


def _norm(kind: Norm, channels: int, num_groups: int) -> nn.Module:
    if kind == "gn":
        if channels % num_groups:
            raise ValueError(
                f"GroupNorm({num_groups}) needs channels divisible by it, got {channels}"
            )
        return nn.GroupNorm(num_groups, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'gn' or 'bn', got {kind!r}")


class ConvNormAct(nn.Sequential):
    """1x1 conv (no bias) + GroupNorm/BatchNorm + optional ReLU (mmcv ``ConvModule``)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: Norm, num_groups: int, act: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _norm(norm, out_channels, num_groups),
        ]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class NMF2D(nn.Module):
    """Non-negative matrix factorisation by multiplicative updates, HamNet (ICLR 2021) Alg. 1.

    A map (B, C, H, W) is read as S matrices X (D = C/S, N = H*W) per image and approximated
    by ``X ~ bases @ coef^T`` with bases (D, R) and coefficients (N, R), both non-negative::

        bases_0 = normalize_D(U[0, 1))            coef_0 = softmax_R(inv_t * X^T bases_0)
        repeat steps:  coef  <- coef  * (X^T bases) / (coef bases^T bases + 1e-6)
                       bases <- bases * (X coef)    / (bases coef^T coef + 1e-6)
        coef <- one more coef update;  output = bases @ coef^T

    ``steps`` is ``train_steps`` in training and ``eval_steps`` in evaluation. The input must
    be non-negative (the Hamburger feeds it after a ReLU); the output then is too.

    Args:
        md_s: number of matrices S per map (C must be divisible by it).
        md_r: rank R.
        train_steps, eval_steps: multiplicative-update iterations.
        inv_t: inverse temperature of the initial softmax (mmseg's NMF2D: 1).
        rand_init: redraw random bases every call; otherwise fixed bases drawn once.
        eval_seed: with ``rand_init``, seed of the evaluation bases (None: global RNG).
        one_step_grad: no gradient through the iterations, only through the last update.
        channels: C, needed to build the fixed bases when ``rand_init`` is False.

    Example:
        >>> import torch
        >>> nmf = NMF2D(md_r=4, eval_seed=0).eval()
        >>> x = torch.rand(2, 16, 5, 6)
        >>> y = nmf(x)
        >>> y.shape, bool((y >= 0).all()), bool(torch.equal(y, nmf(x)))
        (torch.Size([2, 16, 5, 6]), True, True)
    """

    bases: Tensor | None

    def __init__(
        self,
        md_s: int = 1,
        md_r: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        rand_init: bool = True,
        eval_seed: int | None = None,
        one_step_grad: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        self.S, self.R = md_s, md_r
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.inv_t, self.rand_init, self.eval_seed = inv_t, rand_init, eval_seed
        self.one_step_grad = one_step_grad
        if rand_init:
            self.register_buffer("bases", None)
        else:
            if channels is None or channels % md_s:
                raise ValueError(
                    f"fixed bases (rand_init=False) need channels divisible by MD_S={md_s}, "
                    f"got channels={channels}"
                )
            self.register_buffer("bases", self._draw(1, channels // md_s, torch.device("cpu")))

    @property
    def steps(self) -> int:
        """Iterations this call will run (``train_steps`` or ``eval_steps``)."""
        return self.train_steps if self.training else self.eval_steps

    def _draw(
        self, batch: int, d: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        bases = torch.rand(batch * self.S, d, self.R, generator=generator)
        return F.normalize(bases, dim=1).to(device)

    def local_step(self, x: Tensor, bases: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
        """One multiplicative update of the coefficients, then of the bases."""
        coef = self.update_coef(x, bases, coef)
        numerator = torch.bmm(x, coef)  # (BS, D, R)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + 1e-6), coef

    @staticmethod
    def update_coef(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        """``coef * (X^T bases) / (coef bases^T bases + 1e-6)``."""
        numerator = torch.bmm(x.transpose(1, 2), bases)  # (BS, N, R)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Bases (B*S, D, R) and coefficients (B*S, N, R) of a map (B, C, H, W)."""
        b, c, h, w = x.shape
        if c % self.S:
            raise ValueError(f"channels {c} not divisible by MD_S={self.S}")
        d = c // self.S
        x = x.float().reshape(b * self.S, d, h * w)
        if self.bases is None:
            gen = None
            if not self.training and self.eval_seed is not None:
                gen = torch.Generator().manual_seed(self.eval_seed)
            bases = self._draw(b, d, x.device, gen)
        else:
            if self.bases.shape[1] != d:
                raise ValueError(f"fixed bases are for D={self.bases.shape[1]}, got D={d}")
            bases = self.bases.float().repeat(b, 1, 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.one_step_grad):
            coef = torch.softmax(self.inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)
            for _ in range(self.steps):
                bases, coef = self.local_step(x, bases, coef)
        return bases, self.update_coef(x, bases, coef)

    def forward(self, x: Tensor) -> Tensor:
        """The rank-R non-negative reconstruction of ``x`` (B, C, H, W), in ``x``'s dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            bases, coef = self.factorize(x)
            out = torch.bmm(bases, coef.transpose(1, 2))
        return out.reshape(x.shape).to(x.dtype)


class Hamburger(nn.Module):
    """Hamburger, HamNet (ICLR 2021) eq. (1): ``ReLU(x + Norm(Conv(NMF(ReLU(Conv(x))))))``.

    Lower bread: 1x1 conv with bias, ReLU; ham: :class:`NMF2D`; upper bread: 1x1 conv + norm
    (no activation); a residual connection and a ReLU (mmseg's ``Hamburger``).
    """

    def __init__(
        self, channels: int = 512, norm: Norm = "gn", num_groups: int = 32, **nmf_kwargs: object
    ) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham = NMF2D(channels=channels, **nmf_kwargs)  # type: ignore[arg-type]
        self.ham_out = ConvNormAct(channels, channels, norm, num_groups, act=False)

    def forward(self, x: Tensor) -> Tensor:
        """Same shape as ``x`` (B, C, H, W)."""
        enjoy = self.ham_out(self.ham(F.relu(self.ham_in(x))))
        return F.relu(x + enjoy)


class LightHamHead(nn.Module):
    """Light Hamburger head (SegNeXt / mmseg ``LightHamHead``), CPAL-T's decoder.

    The selected levels (``in_index``, default the last three) are resized to the first
    selected level (bilinear, align_corners=False), concatenated, squeezed by a 1x1
    ConvNormReLU to ``ham_channels``, passed through the :class:`Hamburger`, aligned by a 1x1
    ConvNormReLU to ``channels``, then Dropout2d and a 1x1 classifier. The logits come out at
    the first selected level's size (stride 8 for a stride 4..32 pyramid and the default
    ``in_index``): the recipe upsamples them to the image.

    Args:
        in_channels: channels of every level ``forward`` receives, finest first.
        channels: width of the align conv (CPAL 512).
        num_classes: output classes.
        ham_channels: Hamburger width (CPAL 512).
        in_index: the levels used (default: the last three, all if fewer).
        dropout: Dropout2d probability before the classifier (0.1).
        norm: ``"gn"`` (GroupNorm, mmseg's ``ham_norm_cfg``) or ``"bn"`` (the BatchNorm CPAL's
            config actually passes).
        num_groups: GroupNorm groups (32).
        md_s, md_r, train_steps, eval_steps, inv_t, rand_init, eval_seed, one_step_grad: of
            :class:`NMF2D` (mmseg defaults 1, 64, 6, 7, 1, True).

    Example:
        >>> import torch
        >>> head = LightHamHead([8, 16, 32, 64], channels=32, ham_channels=32, num_classes=3,
        ...                     num_groups=8, md_r=4)
        >>> feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
        >>> head(feats).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 512,
        *,
        num_classes: int,
        ham_channels: int = 512,
        in_index: Sequence[int] | None = None,
        dropout: float = 0.1,
        norm: Norm = "gn",
        num_groups: int = 32,
        md_s: int = 1,
        md_r: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        rand_init: bool = True,
        eval_seed: int | None = None,
        one_step_grad: bool = False,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("LightHamHead needs at least one input level")
        n = len(in_channels)
        index = list(range(max(0, n - 3), n)) if in_index is None else list(in_index)
        if not index or any(not -n <= i < n for i in index):
            raise ValueError(f"in_index {in_index} does not select among {n} levels")
        self.in_channels, self.in_index = in_channels, [i % n for i in index]
        self.squeeze = ConvNormAct(
            sum(in_channels[i] for i in self.in_index), ham_channels, norm, num_groups
        )
        self.hamburger = Hamburger(
            ham_channels,
            norm,
            num_groups,
            md_s=md_s,
            md_r=md_r,
            train_steps=train_steps,
            eval_steps=eval_steps,
            inv_t=inv_t,
            rand_init=rand_init,
            eval_seed=eval_seed,
            one_step_grad=one_step_grad,
        )
        self.align = ConvNormAct(ham_channels, channels, norm, num_groups)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits (B, K, h, w) at the first selected level's size from levels (B, C_i, H_i, W_i)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} levels, got {len(features)}")
        used = [features[i] for i in self.in_index]
        size = used[0].shape[-2:]
        x = self.squeeze(torch.cat([resize_to(f, size) for f in used], dim=1))
        x = self.align(self.hamburger(x))
        return self.classifier(self.dropout(x))
