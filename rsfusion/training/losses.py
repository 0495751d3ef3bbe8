"""Segmentation losses: plain cross-entropy and error-aware auxiliary supervision.

Three of the four methods train single-modality auxiliary heads on a target that depends on where
the main (fused) head is right (KTB, Cai et al. CVPR 2025; MoBaNet, arXiv 2026):

- ``hard`` (MoBaNet hard-pixel supervision): aux heads learn only the pixels the main head got
  **wrong**; those it got right are ignored.
- ``self_teaching`` (KTB, Cai et al. CVPR 2025): aux heads learn only the pixels the main head got
  **right**; those it got wrong are ignored.

``L = CE(main, y) + weight * sum_k CE(aux_k, y')``. The selection uses the argmax of the detached
main logits, so no gradient reaches the main head through it. Every cross-entropy here is a mean
over the valid pixels and is 0 (with zero gradient), not NaN, when there are none.

Example:
    >>> loss = AuxSupervision("hard", weight=0.01)
    >>> main, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    >>> parts = loss(main, {"rgb": torch.zeros(1, 3, 2, 2)}, y)  # main right everywhere
    >>> sorted(parts), round(float(parts["main"]), 4), float(parts["aux_rgb"])
    (['aux_rgb', 'loss', 'main'], 1.0986, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AuxMode = Literal["hard", "self_teaching"]
_AUX_MODES = ("hard", "self_teaching")


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over the valid pixels; 0 when none is valid (never NaN).

    Logits whose size differs from the target's are bilinearly resized to it first.

    Args:
        logits: (B, K, h, w) class scores.
        target: (B, H, W) class ids, ``ignore_index`` where unlabelled.
        ignore_index: label id that contributes nothing.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        size = target.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    valid = (target != ignore_index).sum()
    return total / valid.clamp(min=1).to(total.dtype)


def split_output(out: Tensor | Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """(main logits, aux logits by name) of a model output (logits, or ``{"out", "aux"}``)."""
    if isinstance(out, Tensor):
        return out, {}
    return out["out"], dict(out.get("aux") or {})


def aux_target(main: Tensor, target: Tensor, mode: AuxMode, ignore_index: int = 255) -> Tensor:
    """The aux heads' target ``y'``: ``target`` with ignore where the main head is right / wrong.

    Args:
        main: (B, K, H, W) main logits at the label size (detached here).
        target: (B, H, W) labels.
        mode: ``"hard"`` keeps the pixels the main head got wrong (MoBaNet's hard pixels);
            ``"self_teaching"`` keeps those it got right (KTB's self-teaching).
        ignore_index: label id of unlabelled pixels (they stay ignored).
    """
    if mode not in _AUX_MODES:
        raise ValueError(f"aux mode must be one of {_AUX_MODES}, got {mode!r}")
    with torch.no_grad():
        right = main.detach().argmax(1) == target
        keep = ~right if mode == "hard" else right
        keep &= target != ignore_index
        return torch.where(keep, target, torch.full_like(target, ignore_index))


class SegmentationLoss(nn.Module):
    """Cross-entropy with an ignore index that is 0, not NaN, on an all-ignored batch.

    Args:
        ignore_index: label id that contributes nothing.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, self.ignore_index)


class AuxSupervision(nn.Module):
    """Main CE plus error-aware auxiliary CE (MoBaNet hard pixels / KTB self-teaching).

    ``L = CE(main, y) + weight * sum_k CE(aux_k, y')`` (KTB and MoBaNet, both weight 0.01); see
    :func:`aux_target` for ``y'``. Aux logits of another size are bilinearly resized to the
    label size first.

    Args:
        mode: ``"hard"`` (MoBaNet) or ``"self_teaching"`` (KTB).
        weight: factor on the summed aux losses (both papers: 0.01).
        ignore_index: label id that contributes nothing.
    """

    def __init__(self, mode: AuxMode, weight: float = 0.01, ignore_index: int = 255) -> None:
        super().__init__()
        if mode not in _AUX_MODES:
            raise ValueError(f"aux mode must be one of {_AUX_MODES}, got {mode!r}")
        if weight < 0:
            raise ValueError(f"aux weight must be >= 0, got {weight}")
        self.mode: AuxMode = mode
        self.weight = float(weight)
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return f"mode={self.mode}, weight={self.weight}, ignore_index={self.ignore_index}"

    def forward(
        self, main: Tensor, aux: Mapping[str, Tensor] | None, target: Tensor
    ) -> dict[str, Tensor]:
        """Total and per-part losses.

        Args:
            main: (B, K, h, w) main logits (resized to the label size when different).
            aux: aux logits by name, (B, K, h_k, w_k) each; None or empty for none.
            target: (B, H, W) labels.

        Returns:
            ``loss`` (the total, to back-propagate), ``main`` and one ``aux_<name>`` per aux
            head (unweighted, for logging).
        """
        if main.shape[-2:] != target.shape[-2:]:
            main = F.interpolate(main, size=target.shape[-2:], mode="bilinear", align_corners=False)
        parts = {"main": cross_entropy(main, target, self.ignore_index)}
        total = parts["main"]
        if aux:
            y_aux = aux_target(main, target, self.mode, self.ignore_index)
            for name, logits in aux.items():
                part = cross_entropy(logits, y_aux, self.ignore_index)
                parts[f"aux_{name}"] = part
                total = total + self.weight * part
        return {"loss": total, **parts}


class RemapLoss(nn.Module):
    """SegRGB-X's generalist loss, paper eq. 8: ``CE(X, Y) + CE(remap(X), remap(Y))``.

    ``X`` are logits over the unified label space, ``Y`` unified labels; ``remap`` takes each
    sample to its own dataset's classes (:meth:`UnifiedLabelSpace.select_logits` on the
    logits, :meth:`UnifiedLabelSpace.remap` on the labels: unified classes the dataset lacks
    become ignored). Both terms are means over valid pixels; the second pools the valid pixels
    of every sample in the batch (each in its own dataset's classes), so a batch of one dataset
    gives exactly ``CE(select(X), remap(Y))`` [inf: the paper writes the per-sample form].

    Example:
        >>> from rsfusion.data.labelspace import UnifiedLabelSpace
        >>> space = UnifiedLabelSpace(["a", "b", "c"], {"d1": [("a", "a"), ("c", "c")]})
        >>> logits, y = torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 1]]])  # "b" is not in d1
        >>> parts = RemapLoss(space)(logits, y, ["d1"])
        >>> round(float(parts["unified"]), 4), round(float(parts["remap"]), 4)  # ln 3, ln 2
        (1.0986, 0.6931)
    """

    def __init__(self, space: Any, ignore_index: int | None = None) -> None:
        super().__init__()
        self.space = space
        self.ignore_index = space.ignore_index if ignore_index is None else ignore_index

    def forward(self, logits: Tensor, target: Tensor, datasets: Any) -> dict[str, Tensor]:
        """``{"loss", "unified", "remap"}`` for logits (B, K, H, W) over the unified classes,
        unified labels (B, H, W) and each sample's dataset name."""
        datasets = list(datasets)
        if len(datasets) != logits.shape[0]:
            raise ValueError(f"{len(datasets)} dataset names for {logits.shape[0]} samples")
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        unified = cross_entropy(logits, target, self.ignore_index)
        total = logits.new_zeros(())
        count = 0
        for name in dict.fromkeys(datasets):
            index = [i for i, d in enumerate(datasets) if d == name]
            own = self.space.remap(target[index], name)
            valid = int((own != self.ignore_index).sum())
            if valid:
                sub = self.space.select_logits(logits[index], name)
                ce = F.cross_entropy(sub, own, ignore_index=self.ignore_index, reduction="sum")
                total = total + ce
                count += valid
        remap = total / count if count else total + 0.0 * logits.sum()
        return {"loss": unified + remap, "unified": unified, "remap": remap}
