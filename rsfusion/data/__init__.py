"""Datasets and datamodules: ISPRS rasters (torchgeo RasterDatasets) and the natural-image RGB+X
releases (NonGeoDatasets), one entry point from a config's ``data`` section."""

from rsfusion.data.factory import make_datamodule, model_card

__all__ = ["make_datamodule", "model_card"]
