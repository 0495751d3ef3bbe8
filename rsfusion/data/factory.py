"""One entry point from a config's ``data`` section to its datamodule, by the card's kind."""

from __future__ import annotations

from typing import Any

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.config import DataConfig


def model_card(cfg: DataConfig) -> DatasetCard:
    """The card as the model sees it: for natural cards the RGB and X modalities' ``bands``
    are their encodings' output channels (e.g. depth repeated to 3); ISPRS cards unchanged."""
    card = load_card(cfg.card)
    if card.kind != "natural":
        return card
    return card.encoded({cfg.rgb: None, **({cfg.x: cfg.x_encoding} if cfg.x else {})})


def make_datamodule(cfg: DataConfig, seed: int = 42) -> Any:
    """:class:`ISPRSDataModule` for remote-sensing cards, :class:`NaturalDataModule` for
    ``kind: natural`` ones; both expose ``card`` (as the model sees it) and ``describe()``."""
    if load_card(cfg.card).kind == "natural":
        from rsfusion.data.natural.datamodule import NaturalDataModule

        return NaturalDataModule(cfg, seed)
    from rsfusion.data.datamodule import ISPRSDataModule

    return ISPRSDataModule(cfg, seed)
