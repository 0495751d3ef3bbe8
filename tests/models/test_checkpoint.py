"""The checkpoint schema: read as data, typed metadata, checks against a config."""

from __future__ import annotations

import pickle

import pytest
import torch

from rsfusion.errors import CheckpointMismatchError, MissingFileError, NonFiniteError, WeightsError
from rsfusion.models.checkpoint import (
    META_KEY,
    CheckpointMeta,
    nonfinite_tensors,
    read_checkpoint,
    read_torch_file,
)

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


def _saved(path, **extra):
    torch.save({"state_dict": {"w": torch.ones(4), "n": torch.tensor([3])}, META_KEY: META,
                **extra}, path)  # fmt: skip
    return path


def test_empty_and_truncated_files_are_named_in_one_line(tmp_path):
    good = _saved(tmp_path / "good.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(
        CheckpointMismatchError, match=r"--resume .*empty.ckpt is empty \(0 bytes\)"
    ):
        read_checkpoint(empty, "--resume")
    data = good.read_bytes()
    for n, cut in enumerate((len(data) // 2, len(data) - 1, 10)):
        path = tmp_path / f"cut{n}.ckpt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointMismatchError, match="cannot be read as a checkpoint") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointMismatchError, match="notes.ckpt cannot be read"):
        read_checkpoint(text)


def test_non_finite_weights_are_refused_with_a_count(tmp_path):
    path = tmp_path / "diverged.ckpt"
    state = {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]),
             "c": torch.full((2,), float("-inf")), "steps": torch.tensor([7])}  # fmt: skip
    torch.save({"state_dict": state, META_KEY: META}, path)
    with pytest.raises(NonFiniteError, match=r"diverged.ckpt: 2 of 4 tensors hold NaN or inf"):
        read_checkpoint(path, "--ckpt")
    assert nonfinite_tensors(state) == ["b", "c"]


def test_the_safe_reader_refuses_pickled_objects_in_any_torch_file(tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(1), "x": Payload()}, weights)
    with pytest.raises(WeightsError, match=r"weights.pth holds pickled Python objects \(print\)"):
        read_torch_file(weights)
    assert "code ran" not in capsys.readouterr().out
    legacy = tmp_path / "legacy.pt"  # the old (non-zip) torch format is data too
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_torch_file(legacy)["w"], torch.ones(2))
    with pytest.raises(MissingFileError, match="nope.pt: no such file"):
        read_torch_file(tmp_path / "nope.pt")


def test_weights_files_with_payloads_nan_or_corruption_are_weights_errors(tmp_path):
    from rsfusion.models.backbones.weights import read_source

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, evil)
    with pytest.raises(WeightsError, match="holds pickled Python objects"):
        read_source(evil)
    nan = tmp_path / "nan.pth"
    torch.save({"model": {"w": torch.full((2,), float("nan")), "v": torch.ones(1)}}, nan)
    with pytest.raises(WeightsError, match=r"nan.pth: 1 of 2 tensors hold NaN or inf"):
        read_source(nan)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(WeightsError, match="broken.safetensors cannot be read as safetensors"):
        read_source(broken)


def test_check_fits_refuses_other_model_settings():
    meta = CheckpointMeta.from_dict(META)
    model = {**META["model"], "kwargs": {"decoder_channels": [64, 32, 16, 8, 4]}}
    other = CheckpointMeta.from_dict({**META, "model": model})
    with pytest.raises(CheckpointMismatchError, match=r"model.kwargs differ in \['decoder_ch"):
        meta.check_fits(other, "--ckpt a.ckpt")
    arch = CheckpointMeta.from_dict({**META, "model": {**META["model"], "arch": "FPN"}})
    with pytest.raises(CheckpointMismatchError, match="model.arch is 'Unet', this config's 'FPN'"):
        meta.check_fits(arch, "--ckpt a.ckpt")
