"""ZJU-RGB-P (Xiang et al., 2021, EAFNet): urban RGB + polarisation (AoLP), 8 classes, 344 / 50.

``data_catalog/zju_rgbp.yaml`` describes the layout Road-Former's ``MMZJUDataset`` reads
(``{train,val}/0/<stem>_image0_0.png`` RGB, ``aolp2/<stem>_aolp.png``, colour-coded
``label/<stem>_image0.png``; black = unlabelled -> ignore). File names carry a per-modality
suffix, so the sample id (``<stem>``) and its split folder are read back from the RGB paths
(:class:`~rsfusion.data.natural.deliver.RGBPathSamples`); the card's test part is the val set
(no test split was released), read from ``val/``.
"""

from __future__ import annotations

from rsfusion.data.natural.deliver import RGBPathSamples


class ZJURGBP(RGBPathSamples):
    """ZJU-RGB-P pairs (id = the file stem, e.g. ``0345``), 1024 x 1224.

    Example:
        >>> ds = ZJURGBP("data/ZJU-RGB-P", "val", x="aolp")  # doctest: +SKIP
        >>> ds.samples[0].id, ds.samples[0].split  # doctest: +SKIP
        ('0345', 'val')
    """

    card_name = "zju_rgbp"
