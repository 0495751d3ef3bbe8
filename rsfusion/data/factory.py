"""One entry point from a config's ``data`` section to its datamodule, by the card's kind (or
several datasets at once: ``data.joint``, :mod:`rsfusion.data.joint`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.config import DataConfig

if TYPE_CHECKING:
    from rsfusion.data.joint import JointCard


def model_card(cfg: DataConfig) -> DatasetCard | JointCard:
    """The card as the model sees it: for natural cards the RGB and X modalities' ``bands``
    are their encodings' output channels (e.g. depth repeated to 3); ISPRS cards unchanged;
    with ``data.joint`` the :class:`~rsfusion.data.joint.JointCard` (unified classes)."""
    if cfg.joint is not None:
        from rsfusion.data.joint import joint_card

        return joint_card(cfg)
    card = load_card(cfg.card)
    if card.kind != "natural":
        return card
    return card.encoded({cfg.rgb: None, **({cfg.x: cfg.x_encoding} if cfg.x else {})})


def make_datamodule(cfg: DataConfig, seed: int = 42) -> Any:
    """:class:`ISPRSDataModule` for remote-sensing cards, :class:`NaturalDataModule` for
    ``kind: natural`` ones, :class:`JointDataModule` when ``data.joint`` is set; all expose
    ``card`` (as the model sees it) and ``describe()``."""
    if cfg.joint is not None:
        from rsfusion.data.joint import JointDataModule

        return JointDataModule(cfg, seed)
    if load_card(cfg.card).kind == "natural":
        from rsfusion.data.natural.datamodule import NaturalDataModule

        return NaturalDataModule(cfg, seed)
    from rsfusion.data.datamodule import ISPRSDataModule

    return ISPRSDataModule(cfg, seed)
