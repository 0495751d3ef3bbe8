"""Natural-image RGB+X benchmarks (NYUDepthV2, SUN-RGBD, ...) from ``kind: natural`` cards.

Adding a dataset: a card ``data_catalog/<name>.yaml`` (schema in :mod:`rsfusion.catalog`), and,
only if the card cannot describe the release, ``rsfusion/data/natural/<name>.py`` with a
:class:`~rsfusion.data.natural.base.NaturalRGBXDataset` subclass setting ``card_name``. This
package's ``__init__`` imports nothing heavy: cards import :mod:`.encodings` to validate.
"""
