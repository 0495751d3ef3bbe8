"""The natural-image framework: card schema errors, readers, encodings, labels, CPU crops."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rsfusion.catalog import LabelSpec, load_card
from rsfusion.data.natural.base import (
    NaturalRGBXDataset,
    SampleRef,
    decode_index_labels,
    list_samples,
    normalise_x,
)
from rsfusion.data.natural.encodings import apply_ops
from rsfusion.data.natural.matfile import read_mat, write_mat
from rsfusion.data.natural.readers import read_file
from rsfusion.data.natural.transforms import SampleResizeCrop, pad_collate
from rsfusion.data.normalise import XNorm
from rsfusion.errors import (
    EncodingError,
    LabelColourError,
    MatFileError,
    SampleFileError,
    SampleFormatError,
)

MAT = Path(__file__).parent / "mat"

CARD = {
    "name": "tiny",
    "kind": "natural",
    "image_size": [4, 6],
    "modalities": {
        "rgb": {"patterns": ["rgb/{id}.png"], "bands": ["red", "green", "blue"]},
        "depth": {
            "patterns": ["depth/{id}.png", "depth/{id}.npy"],
            "bands": ["depth"],
            "encodings": {
                "metres": {"invalid": [0], "scale": {"uint16": 0.001, "float32": 1.0}},
                "repeat3": {"repeat": 3},
            },
            "default_encoding": "repeat3",
        },
    },
    "labels": {"patterns": ["label/{id}.png", "label/{id}.mat"], "void": [0], "offset": -1},
    "ignore_index": 255,
    "classes": [{"name": n, "colour": [i * 40 + 10, 0, 0]} for i, n in enumerate("abc")],
    "splits": {"official": {"train": {"file": "train.txt"}, "test": {"range": [7, 8]}}},
}


def write_card(tmp_path: Path, card: dict) -> Path:
    path = tmp_path / f"{card['name']}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def mutate(path: str, value: object) -> dict:
    card = copy.deepcopy(CARD)
    *parents, last = path.split(".")
    node = card
    for key in parents:
        node = node[key]
    node[last] = value
    return card


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("modalites", {}, "unknown key 'modalites'; did you mean 'modalities'"),
        ("modalities.depth.encodings.metres", {"scael": 0.001}, "did you mean 'scale'"),
        ("modalities.depth.encodings.repeat3", {"repeat": 0}, "op 'repeat': expects an int >= 1"),
        ("modalities.depth.encodings.repeat3", {"channels": [2]}, "channel 2 does not exist"),
        ("modalities.depth.encodings.metres", {"scale": {"uint17": 1}}, "not a numpy dtype"),
        ("modalities.depth.default_encoding", "hha", "default_encoding: 'hha' is not one of"),
        ("modalities.rgb.patterns", ["rgb/{scene}.png"], "must contain {id}"),
        ("modalities.rgb.patterns", ["rgb/{id}_{weather}.png"], "uses ['weather']"),
        ("labels.encoding", "colour", "expected 'index' or 'rgb'"),
        ("labels.value_map", {5: 7}, "neither a class index (0..2) nor the ignore index"),
        ("splits.official.test", {"range": [8, 7]}, "first 8 > last 7"),
        ("splits.official.test", {"file": "a.txt", "glob": "*.png"}, "exactly one of"),
        ("ignore_index", 1, "ignore_index 1 is a class index"),
        ("image_size", [4], "expected [height, width] or 'varying'"),
        ("default_split", "lineage", "default_split 'lineage' is not one of ['official']"),
    ],
)
def test_card_errors_name_the_key_and_the_fix(tmp_path, path, value, message):
    card_file = write_card(tmp_path, mutate(path, value))
    with pytest.raises(ValueError, match="is malformed") as err:
        load_card(card_file)
    assert message in str(err.value)
    assert str(card_file) in str(err.value)


def test_valid_card_parses_encodings_and_bands(tmp_path):
    card = load_card(write_card(tmp_path, CARD))
    depth = card.modality("depth")
    assert card.kind == "natural" and card.image_size == (4, 6) and card.num_classes == 3
    assert depth.encoding().name == "repeat3" and depth.encoding().bands == ("depth",) * 3
    assert depth.encoding("metres").ops == {
        "invalid": [0],
        "scale": {"uint16": 0.001, "float32": 1.0},
    }
    assert depth.encoding("raw").bands == ("depth",)
    assert card.encoded({"depth": "metres"}).modality("depth").bands == ("depth",)
    assert card.encoded({"depth": None}).modality("depth").bands == ("depth",) * 3
    assert card.sample_split(None, "test").value == (7, 8)
    with pytest.raises(KeyError, match="no encoding 'hha'"):
        depth.encoding("hha")
    with pytest.raises(KeyError, match="natural-image card"):
        card.split()


# ------------------------------------------------------------------ readers
def test_png_readers_keep_bit_depth_and_palette_indices(tmp_path):
    depth = np.array([[0, 300, 65535]], dtype=np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    out = read_file(tmp_path / "d.png")
    assert (
        out.dtype == np.uint16 and out.shape == (1, 1, 3) and out[0, 0].tolist() == [0, 300, 65535]
    )
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_file(tmp_path / "c.png"), np.moveaxis(rgb, -1, 0))
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    pal.save(tmp_path / "p.png")
    assert read_file(tmp_path / "p.png")[0].tolist() == [[0, 1], [2, 1]]  # indices, not colours


def test_array_readers_npy_npz_and_channel_order(tmp_path):
    hwc = np.random.default_rng(0).random((5, 7, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", hwc)
    assert np.array_equal(read_file(tmp_path / "a.npy"), np.moveaxis(hwc, -1, 0))
    np.save(tmp_path / "b.npy", np.moveaxis(hwc, -1, 0))
    assert np.array_equal(read_file(tmp_path / "b.npy", channels_first=True)[1], hwc[..., 1])
    np.savez(tmp_path / "c.npz", aolp=hwc[..., 0], dolp=hwc[..., 1])
    assert np.array_equal(read_file(tmp_path / "c.npz", key="dolp")[0], hwc[..., 1])
    with pytest.raises(SampleFormatError, match=r"c\.npz: holds arrays \['aolp', 'dolp'\]"):
        read_file(tmp_path / "c.npz")


def test_mat_reader_on_files_written_by_matlab():
    expected = np.transpose(np.reshape(np.arange(1, 25), (4, 3, 2)))
    for name in ("test3dmatrix_6.5.1_GLNX86.mat", "test3dmatrix_7.4_GLNX86.mat"):
        assert np.array_equal(read_mat(MAT / name), expected)  # uncompressed and zlib (-v7)
    assert np.allclose(
        read_mat(MAT / "testmulti_7.4_GLNX86.mat", "theta")[0], np.pi / 4 * np.arange(9)
    )
    floats = read_mat(MAT / "big_endian.mat", "floats")
    assert floats.dtype == np.float32 and floats.tolist() == [[2, 3], [3, 4]]
    assert read_mat(MAT / "testbool_8_WIN64.mat").tolist() == [[True], [False]]
    with pytest.raises(MatFileError, match=r"numeric variables \['a', 'theta'\]"):
        read_mat(MAT / "testmulti_7.4_GLNX86.mat")
    with pytest.raises(MatFileError, match="'teststruct' is a struct"):
        read_mat(MAT / "teststruct_7.4_GLNX86.mat", "teststruct")
    with pytest.raises(MatFileError, match=r"v7\.3 \(HDF5\).*h5py"):
        read_mat(MAT / "testhdf5_7.4_GLNX86.mat")


def test_mat_writer_round_trips_through_the_reader(tmp_path):
    labels = np.random.default_rng(1).integers(0, 41, (6, 9)).astype(np.uint8)
    write_mat(tmp_path / "l.mat", {"seglabel": labels, "names": np.arange(3.0)})
    out = read_file(tmp_path / "l.mat", key="seglabel")
    assert out.dtype == np.uint8 and np.array_equal(out[0], labels)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SampleFormatError, match=r"broken\.png: cannot be read"):
        read_file(tmp_path / "broken.png")
    (tmp_path / "x.exr").write_bytes(b"")
    with pytest.raises(SampleFormatError, match=r"x\.exr: no reader for '\.exr'"):
        read_file(tmp_path / "x.exr")
    with pytest.raises(SampleFileError, match=r"missing file .*nope\.png"):
        read_file(tmp_path / "nope.png")


# ------------------------------------------------------------------ encodings
def test_16bit_depth_to_metres_with_unknown_as_nan():
    stored = np.array([[[0, 1234, 65535]]], dtype=np.uint16)
    out = apply_ops(stored, {"invalid": [0], "scale": {"uint16": 0.001}}, "d.png")
    assert out.dtype == np.float32 and np.isnan(out[0, 0, 0])
    assert out[0, 0, 1:].tolist() == pytest.approx([1.234, 65.535])
    with pytest.raises(EncodingError, match=r"d8\.png: stores uint8.*only known for \['uint16'\]"):
        apply_ops(stored.astype(np.uint8), {"scale": {"uint16": 0.001}}, "d8.png")


def test_repeat_to_three_channels_and_channel_selection():
    stored = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    out = apply_ops(stored, {"channels": [1], "repeat": 3}, "x.png")
    assert out.shape == (3, 2, 2) and all(np.array_equal(c, stored[1]) for c in out)


def test_to_unit_puts_8_and_16_bit_thermal_on_one_scale():
    eight = np.array([[[0, 128, 255]]], dtype=np.uint8)
    sixteen = (eight.astype(np.uint16) * 257).astype(np.uint16)
    a, b = apply_ops(eight, {"to_unit": True}, "t8"), apply_ops(sixteen, {"to_unit": True}, "t16")
    assert np.allclose(a, b) and a.max() == 1.0
    with pytest.raises(EncodingError, match="stores float32: use 'scale'"):
        apply_ops(eight.astype(np.float32), {"to_unit": True}, "t.npy")


def test_rotr16_undoes_the_sun_rgbd_storage_then_clip():
    mm = np.array([[[0, 1500, 8191, 9000]]], dtype=np.uint16)
    v = mm.astype(np.uint32)
    stored = (((v << 3) | (v >> 13)) & 0xFFFF).astype(np.uint16)
    ops = {"rotr16": 3, "invalid": [0], "scale": {"uint16": 0.001}, "clip": [0.0, 8.0]}
    out = apply_ops(stored, ops, "sun.png")[0, 0]
    assert np.isnan(out[0]) and out[1:].tolist() == pytest.approx([1.5, 8.0, 8.0])


def test_x_normalisation_per_sample_ignores_unknown_values():
    x = np.array([[[np.nan, 1.0, 3.0, 5.0]]], dtype=np.float32)
    assert normalise_x(x, XNorm("raster_minmax"))[0, 0].tolist() == [0.0, 0.0, 0.5, 1.0]
    assert normalise_x(x, XNorm("scale", 2.0))[0, 0].tolist() == [0.0, 0.5, 1.5, 2.5]
    assert normalise_x(x, XNorm("dataset", 1.0, 3.0, 2.0))[0, 0].tolist() == [0.0, -1.0, 0.0, 1.0]


# ------------------------------------------------------------------ labels
def test_index_labels_void_offset_and_value_map():
    spec = LabelSpec(patterns=("l/{id}.png",), void=(0,), offset=-1, value_map={9: 2})
    stored = np.array([[0, 1, 3], [9, 2, 0]], dtype=np.uint8)
    assert decode_index_labels(stored, spec, 3, 255, "l.png").tolist() == [[255, 0, 2], [2, 1, 255]]
    with pytest.raises(SampleFormatError, match=r"l\.png: label values \[4\] map outside"):
        decode_index_labels(np.array([[4, 1]]), spec, 3, 255, "l.png")
    with pytest.raises(SampleFormatError, match="whole numbers"):
        decode_index_labels(np.array([[1.5]]), spec, 3, 255, "l.mat")


# ------------------------------------------------------------------ dataset on a tiny release
@pytest.fixture
def tiny(tmp_path):
    """A 3-sample release of the CARD layout: 4x6 px, depth as 16-bit PNG, .npy and labels .mat."""
    card = load_card(write_card(tmp_path, CARD))
    root = tmp_path / "release"
    for d in ("rgb", "depth", "label"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for n in (1, 7, 8):
        Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).save(root / f"rgb/{n}.png")
        labels = np.full((4, 6), n % 3 + 1, dtype=np.uint8)
        labels[0, 0] = 0
        if n == 8:
            write_mat(root / "label/8.mat", {"seglabel": labels})
        else:
            Image.fromarray(labels).save(root / f"label/{n}.png")
    depth = np.full((4, 6), 2500, dtype=np.uint16)
    depth[1, 2] = 0
    Image.fromarray(depth).save(root / "depth/1.png")
    Image.fromarray(depth).save(root / "depth/7.png")
    np.save(root / "depth/8.npy", np.full((4, 6), 1.25, dtype=np.float32))
    (root / "train.txt").write_text("rgb/1.png label/1.png\n\n# comment\n")
    return card, root


def test_dataset_reads_split_file_range_and_alternative_patterns(tiny):
    card, root = tiny
    train = NaturalRGBXDataset(root, "train", card=card, x="depth", encodings={"depth": "metres"})
    assert [r.id for r in train.samples] == ["1"]
    s = train[0]
    assert s["image"].shape == (3, 4, 6) and s["image"].max() > 1  # RGB stays 0-255
    assert s["mask"].dtype == torch.long and s["mask"][0, 0] == 255 and s["mask"][1, 1] == 1
    assert s["image_x"][0, 1, 2] == 0 and s["image_x"][0, 0, 0] == pytest.approx(2.5)
    val = NaturalRGBXDataset(root, "val", card=card, x="depth", encodings={"depth": "metres"})
    assert val.part == "test" and [r.id for r in val.samples] == ["7", "8"]
    assert float(val[1]["image_x"].max()) == pytest.approx(1.25)  # .npy float metres
    assert val[1]["mask"][2, 2] == 8 % 3  # labels from the .mat file


def test_missing_and_malformed_files_name_the_file(tiny, tmp_path):
    card, root = tiny
    (root / "depth/1.png").unlink()
    ds = NaturalRGBXDataset(root, "train", card=card, x="depth")
    assert ds.missing_files() == [str(root / "depth/1.png")]
    with pytest.raises(
        SampleFileError, match=r"sample '1' \(train\): missing 'depth' file .*depth/1\.png"
    ):
        ds[0]
    Image.fromarray(np.full((5, 6), 2, dtype=np.uint8)).save(root / "label/7.png")
    test = NaturalRGBXDataset(root, "test", card=card)
    with pytest.raises(SampleFormatError, match=r"sample '7' .*sizes differ .*'label': \(5, 6\)"):
        test[0]
    Image.fromarray(np.full((4, 6), 9, dtype=np.uint8)).save(root / "label/7.png")
    with pytest.raises(SampleFormatError, match=r"label/7\.png: label values \[9\] map outside"):
        test[0]
    shutil.rmtree(root / "rgb")
    (root / "train.txt").unlink()
    with pytest.raises(SampleFileError, match=r"missing split file .*train\.txt"):
        NaturalRGBXDataset(root, "train", card=card)


def test_conditions_by_id_pattern_and_by_folder(tmp_path):
    card = mutate("splits.official.train", {"ids": ["00001D", "00002N", "00003D"]})
    card["conditions"] = {"day": {"match": "D$"}, "night": {"match": "N$"}}
    by_id = load_card(write_card(tmp_path, card))
    assert [r.id for r in list_samples(by_id, tmp_path, None, "train", "night")] == ["00002N"]
    assert len(list_samples(by_id, tmp_path, None, "train")) == 3
    with pytest.raises(KeyError, match=r"no condition 'dusk'; choose one of \['day', 'night'\]"):
        list_samples(by_id, tmp_path, None, "train", "dusk")
    card["conditions"]["dusk"] = {}
    with pytest.raises(ValueError, match="conditions.dusk: needs 'match'"):
        load_card(write_card(tmp_path, card))

    folder = copy.deepcopy(CARD) | {"name": "weather"}
    folder["modalities"] = {
        "rgb": {"patterns": ["img/{condition}/{split}/{id}.png"], "bands": ["gray"]}
    }
    folder["labels"] = {"patterns": ["lab/{condition}/{split}/{id}.png"]}
    folder["splits"] = {"official": {"train": {"glob": "img/{condition}/{split}/*.png"}}}
    folder["conditions"] = {"fog": {}, "sun": {"value": "sunny"}}
    card = load_card(write_card(tmp_path, folder))
    for kind in ("img", "lab"):
        for cond, sid in (("fog", "a"), ("sunny", "b")):
            (tmp_path / kind / cond / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((2, 3), 1, np.uint8)).save(
                tmp_path / kind / cond / "train" / f"{sid}.png"
            )
    refs = list_samples(card, tmp_path, None, "train")
    assert [(r.id, r.condition) for r in refs] == [("a", "fog"), ("b", "sunny")]
    sun = NaturalRGBXDataset(tmp_path, "train", card=card, rgb="rgb", condition="sun")
    assert [r.id for r in sun.samples] == ["b"] and sun[0]["mask"].tolist() == [[1] * 3] * 2


def test_colour_coded_labels_decode_through_the_palette(tmp_path):
    card = load_card(
        write_card(tmp_path, mutate("labels", {"patterns": ["c/{id}.png"], "encoding": "rgb"}))
    )
    (tmp_path / "c").mkdir()
    colours = np.array([[[10, 0, 0], [50, 0, 0]], [[90, 0, 0], [0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(colours).save(tmp_path / "c" / "1.png")
    ds = NaturalRGBXDataset(tmp_path, "train", card=card, samples=[SampleRef("1", "train")])
    assert ds.read_labels(ds.samples[0]).tolist() == [[0, 1], [2, 255]]
    colours[0, 0] = (11, 0, 0)
    Image.fromarray(colours).save(tmp_path / "c" / "1.png")
    with pytest.raises(LabelColourError, match=r"c/1\.png: colour \(11, 0, 0\)"):
        ds.read_labels(ds.samples[0])


# ------------------------------------------------------------------ CPU crop / resize, collate
def coordinate_sample(h: int, w: int) -> dict[str, torch.Tensor]:
    """Image channel 0 = row, X = column, mask = (row * w + col) % 200: alignment is checkable."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return {
        "image": torch.stack([rows, cols, rows]).float(),
        "image_x": cols[None].float(),
        "mask": (rows * w + cols) % 200,
    }


def test_random_crop_keeps_image_x_and_mask_aligned():
    torch.manual_seed(0)
    crop = SampleResizeCrop(crop=(5, 7))
    for _ in range(5):
        out = crop(coordinate_sample(12, 20))
        rows, cols = out["image"][0].long(), out["image_x"][0].long()
        assert out["mask"].shape == (5, 7) and torch.equal(out["mask"], (rows * 20 + cols) % 200)


def test_crop_larger_than_image_pads_with_ignore_and_zero():
    out = SampleResizeCrop(crop=(8, 8), ignore_index=255)(coordinate_sample(4, 6))
    assert out["image"].shape == (3, 8, 8)
    assert int((out["mask"] == 255).sum()) == 64 - 24
    assert torch.all(out["image_x"][0][out["mask"] == 255] == 0)


def test_resize_and_random_scale_change_size_masks_nearest():
    s = coordinate_sample(10, 10)
    s["mask"] = (torch.arange(10)[None].repeat(10, 1) >= 5).long() * 3
    out = SampleResizeCrop(size=(20, 30))(s)
    assert out["image"].shape == (3, 20, 30) and set(out["mask"].unique().tolist()) == {0, 3}
    torch.manual_seed(1)
    sizes = {SampleResizeCrop(scale_range=(0.5, 2.0))(s)["image"].shape[-1] for _ in range(6)}
    assert len(sizes) > 1 and all(5 <= v <= 20 for v in sizes)


def test_pad_collate_stacks_varying_sizes_to_a_multiple():
    batch = pad_collate([coordinate_sample(40, 56), coordinate_sample(33, 20)], 32, 255)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert int((batch["mask"][1] != 255).sum()) == 33 * 20
    assert torch.equal(batch["mask"][0, :40, :56], coordinate_sample(40, 56)["mask"])


def test_cat_max_crop_redraws_crops_dominated_by_one_class():
    """CPAL's crop (mmseg cat_max_ratio .75): a crop where one class covers more than 75 % of
    the labelled pixels is drawn again (up to 10 times)."""
    from rsfusion.data.natural.transforms import SampleResizeCrop

    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[:, 48:] = 1  # class 1 only in the right quarter: most 16x16 crops are pure class 0
    sample = {"image": torch.rand(3, 64, 64), "mask": mask}
    plain = SampleResizeCrop(crop=(16, 16))
    balanced = SampleResizeCrop(crop=(16, 16), cat_max=0.75)

    def mixed(transform) -> int:
        torch.manual_seed(0)
        return sum(len(transform(sample)["mask"].unique()) > 1 for _ in range(200))

    assert mixed(balanced) > 2 * mixed(plain)
    with pytest.raises(ValueError, match="cat_max"):
        SampleResizeCrop(crop=(16, 16), cat_max=0.0)


# ------------------------------------------------------------------ copies of a release
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "grey"}, "must be a stored channel count other than the card's 1"),
        ({2: "grey"}, "'grey' reads one band from a 3- or 4-channel file"),
        ({4: [0, 1]}, "expected 'grey' or 1 channel indices in 0..3"),
        ({4: [4]}, "expected 'grey' or 1 channel indices in 0..3"),
    ],
)
def test_channel_variants_are_checked(tmp_path, value, message):
    card_file = write_card(tmp_path, mutate("modalities.depth.channel_variants", value))
    with pytest.raises(ValueError, match="modalities.depth.channel_variants") as err:
        load_card(card_file)
    assert message in str(err.value)


def test_refuse_op_gives_its_reason_and_is_checked(tmp_path):
    ops = {"refuse": {"uint8": "relative depth, no metric scale"}, "scale": 0.001}
    with pytest.raises(EncodingError, match=r"d.png: stores uint8; relative depth, no metric"):
        apply_ops(np.zeros((1, 2, 2), np.uint8), ops, "d.png")
    assert apply_ops(np.full((1, 1, 1), 1000, np.uint16), ops, "d.png").item() == 1.0
    bad = mutate("modalities.depth.encodings.metres", {"refuse": {"uint8": 3}})
    with pytest.raises(ValueError, match="op 'refuse': expects a mapping stored dtype -> reason"):
        load_card(write_card(tmp_path, bad))


def test_rgba_depth_is_read_through_its_variant(tmp_path):
    card = copy.deepcopy(CARD)
    card["modalities"]["depth"]["channel_variants"] = {4: "grey"}
    card["modalities"]["rgb"]["channel_variants"] = {4: [0, 1, 2]}
    card = load_card(write_card(tmp_path, card))
    root = tmp_path / "r"
    for folder in ("rgb", "depth", "label"):
        (root / folder).mkdir(parents=True)
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)).save(
        root / "depth" / "7.png"
    )
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(root / "rgb" / "7.png")
    Image.fromarray(np.ones((4, 6), np.uint8)).save(root / "label" / "7.png")
    ds = NaturalRGBXDataset(root, "test", card=card, x="depth")
    sample = ds[0]
    assert sample["image"].shape == (3, 4, 6) and float(sample["image"][0].max()) == 200
    x = ds.read_modality("depth", ds.samples[0])
    assert x.shape == (3, 4, 6) and np.array_equal(x[1], grey.astype(np.float32))


def test_palette_pngs_give_their_colours_with_as_rgb(tmp_path):
    ids = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(ids).convert("P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 0, 128] + [0] * 759)
    img.save(tmp_path / "l.png")
    assert read_file(tmp_path / "l.png")[0].tolist() == ids.tolist()  # indices
    rgb = read_file(tmp_path / "l.png", as_rgb=True)
    assert rgb.shape == (3, 2, 2) and rgb[:, 0, 1].tolist() == [128, 0, 0]
    assert rgb[:, 1, 0].tolist() == [0, 0, 128]
