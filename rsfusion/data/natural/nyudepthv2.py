"""NYU Depth V2 (Silberman et al., ECCV 2012): 40 classes (Gupta et al., CVPR 2013), 795/654.

Everything is in ``data_catalog/nyudepthv2.yaml``: the CMX/DFormer release layout (RGB/, HHA/,
Depth/, Label/, train.txt/test.txt), depth encodings (``repeat3`` as the papers, ``metres``,
``metres3``; or X = ``hha``) and the label mapping 0 -> ignore, 1..40 -> 0..39. DFormer's
Depth/ PNGs are 8-bit RGBA (``plt.imsave`` with ``Greys_r``, scaled per image): read as one grey
channel; ``metres`` refuses them (relative depth, no metric scale).
"""

from __future__ import annotations

from rsfusion.data.natural.base import NaturalRGBXDataset


class NYUDepthV2(NaturalRGBXDataset):
    """NYU Depth V2 samples (sample id = the image's 1-based index in the labelled set).

    Example:
        >>> ds = NYUDepthV2("data/NYUDepthv2", "train", x="depth")  # doctest: +SKIP
        >>> s = ds[0]; s["image"].shape, s["image_x"].shape  # doctest: +SKIP
        (torch.Size([3, 480, 640]), torch.Size([3, 480, 640]))
    """

    card_name = "nyudepthv2"
