"""The checkpoint schema: read as data, typed metadata, checks against a config."""

from __future__ import annotations

import pickle

import pytest
import torch

from rsfusion.errors import CheckpointMismatchError, MissingFileError
from rsfusion.models.checkpoint import META_KEY, CheckpointMeta, read_checkpoint

META = {
    "card": "vaihingen", "rgb_modality": "irrg", "rgb_bands": ["nir", "red", "green"],
    "x_modality": "dsm", "x_bands": ["elevation"], "rgb_norm": {"mean": [0.0], "std": [1.0]},
    "x_norm": {"mode": "raster_minmax"}, "classes": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]],
    "ignore_index": 255, "window": 64, "config": {"seed": 3},
    "model": {"name": "rgb_only", "num_classes": 2, "rgb_channels": 3, "x_channels": 0},
    "frozen_sha256": None, "pad_multiple": 32,
}  # fmt: skip


class Payload:
    """Runs code when unpickled: what a hostile checkpoint carries."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_a_checkpoint_is_read_as_data_with_typed_metadata(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, META_KEY: META}, path)
    saved, meta = read_checkpoint(path)
    assert torch.equal(saved["state_dict"]["w"], torch.ones(2))
    assert meta.rgb_bands == ["nir", "red", "green"] and meta.get("pad_multiple") == 32
    assert meta.spec.seed == 3 and meta.spec.name == "rgb_only"
    assert meta.to_dict() == META


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, META_KEY: META, "x": Payload()}, f)
    with pytest.raises(CheckpointMismatchError, match="cannot be read as a checkpoint") as err:
        read_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_files_and_metadata_are_named(tmp_path):
    with pytest.raises(MissingFileError, match="--resume .*nope.ckpt: no such checkpoint"):
        read_checkpoint(tmp_path / "nope.ckpt", "--resume")
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointMismatchError, match="no rsfusion metadata"):
        read_checkpoint(path)
    torch.save({"state_dict": {}, META_KEY: {"card": "vaihingen"}}, path)
    with pytest.raises(CheckpointMismatchError, match="lacks rsfusion metadata .*'classes'"):
        read_checkpoint(path)


def test_check_fits_names_what_differs():
    meta = CheckpointMeta.from_dict(META)
    other = CheckpointMeta.from_dict({**META, "x_bands": ["ndsm"]})
    meta.check_fits(CheckpointMeta.from_dict(META), "--ckpt a.ckpt")
    with pytest.raises(
        CheckpointMismatchError, match=r"--ckpt a.ckpt: its x_bands \['elevation'\]"
    ):
        meta.check_fits(other, "--ckpt a.ckpt")
