"""MCubeS (Liang et al., CVPR 2022): material segmentation, RGB + AoLP / DoLP / NIR, 20 classes.

``data_catalog/mcubes.yaml`` describes the official release (``polL_color/``, ``polL_aolp_sin/``,
``polL_aolp_cos/``, ``polL_dolp/``, ``NIR_warped/``, ``NIR_warped_mask/``, ``GT/``,
``list_folder/``). Three things the card cannot say are done here:

- ``aolp`` is stored as two files (sin and cos); the card lists both patterns and they are
  stacked as channels (:attr:`MCubeS.stacked`), in the pattern order;
- the NIR image is warped onto the RGB view and ``NIR_warped_mask`` is 255 where the warp has no
  data: there NIR is unknown (NaN before normalisation, 0 after) and the labels are ignored
  whatever the X modality (so every X is scored on the same pixels);
- the authors' loaders drop the left 192 columns of every modality (``_left_offset``, where the
  warp leaves no data). Here the leading columns that are invalid in every row are dropped, at
  most :attr:`MCubeS.left_offset` (the authors' 192 where the release's warp leaves at least
  that border empty; the 40 px wide test fixture loses its 4 invalid columns). Invalid pixels
  right of the dropped border stay, with their labels ignored.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rsfusion.data.natural.base import NaturalRGBXDataset, SampleRef
from rsfusion.data.natural.encodings import apply_ops
from rsfusion.data.natural.readers import SampleFormatError, read_file


class MCubeS(NaturalRGBXDataset):
    """MCubeS image sets (id ``outscene<date>_<seq>_<frame>``), 1024 x 1224 before the crop.

    Example:
        >>> ds = MCubeS("data/multimodal_dataset", "train", x="aolp")  # doctest: +SKIP
        >>> ds[0]["image_x"].shape  # sin, cos, sin  # doctest: +SKIP
        torch.Size([3, 1024, 1032])
    """

    card_name = "mcubes"
    stacked: ClassVar[tuple[str, ...]] = ("aolp",)  # one file per channel: every pattern read
    warp_mask: ClassVar[str] = "nir_mask"  # the card modality holding the NIR warp's validity
    warped: ClassVar[tuple[str, ...]] = ("nir",)  # unknown where the warp mask is set
    left_offset: ClassVar[int] = 192
    _warp_cache: tuple[SampleRef, np.ndarray] | None = None  # the last sample's mask

    def warp_invalid(self, ref: SampleRef, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``(H, W)`` bool: where the NIR warp has no data (mask != 0), full image width;
        ``shape``: the ``(H, W)`` it must have (the modality or labels it masks)."""
        if self._warp_cache is not None and self._warp_cache[0] == ref:
            invalid = self._warp_cache[1]
        else:
            mod = self.card.modality(self.warp_mask)
            path = self.find_file(mod.patterns, ref, "NIR warp mask")
            invalid = read_file(path)[0] != 0
            self._warp_cache = (ref, invalid)
        if shape is not None and invalid.shape != tuple(shape):
            raise SampleFormatError(
                f"sample '{ref.id}' ({ref.split}): NIR warp mask {invalid.shape} and data "
                f"{tuple(shape)} differ in size; they must be aligned"
            )
        return invalid

    def left_columns(self, ref: SampleRef) -> int:
        """Leading columns invalid in every row, at most ``left_offset`` (0 if all are)."""
        full = self.warp_invalid(ref).all(axis=0)
        if full.all():
            return 0
        return min(int(np.argmin(full)), self.left_offset)

    def _read_stacked(self, name: str, ref: SampleRef) -> np.ndarray:
        mod = self.card.modality(name)
        paths = [self.find_file([p], ref, f"'{name}'") for p in mod.patterns]
        parts = [read_file(p, mod.key, mod.channels_first) for p in paths]
        if len({p.shape[1:] for p in parts}) > 1 or len({p.dtype for p in parts}) > 1:
            raise SampleFormatError(
                f"sample '{ref.id}': the '{name}' files {[str(p) for p in paths]} differ in "
                f"size or type {[(a.shape, str(a.dtype)) for a in parts]}"
            )
        stored = np.concatenate(parts)
        if stored.shape[0] != len(mod.bands):
            raise SampleFormatError(
                f"{paths[0]}: the '{name}' files hold {stored.shape[0]} channel(s); the card "
                f"stores {len(mod.bands)} {list(mod.bands)}"
            )
        return apply_ops(stored, mod.encoding(self.encodings.get(name)).ops, str(paths[0]))

    def read_modality(self, name: str, ref: SampleRef) -> np.ndarray:
        """One modality, encoded, left border dropped; NIR unknown where the warp is invalid."""
        if name in self.stacked:
            arr = self._read_stacked(name, ref)
        else:
            arr = super().read_modality(name, ref)
        if name in self.warped:
            arr = np.where(self.warp_invalid(ref, arr.shape[1:])[None], np.float32(np.nan), arr)
        return arr[:, :, self.left_columns(ref) :]

    def read_labels(self, ref: SampleRef) -> np.ndarray:
        """Material ids; ignored where the NIR warp is invalid; left border dropped."""
        mask = super().read_labels(ref)
        mask[self.warp_invalid(ref, mask.shape)] = self.card.ignore_index
        return mask[:, self.left_columns(ref) :]

    def file_groups(self) -> list[tuple[str, ...]]:
        """As the base class, with every file of a stacked modality and the warp mask."""
        groups: list[tuple[str, ...]] = []
        for name in self.encodings:
            patterns = self.card.modality(name).patterns
            groups += [(p,) for p in patterns] if name in self.stacked else [patterns]
        assert self.card.labels is not None
        return groups + [self.card.labels.patterns, self.card.modality(self.warp_mask).patterns]
