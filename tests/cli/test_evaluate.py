"""scripts/evaluate.py: a trained checkpoint scored with both inputs, RGB only and X only."""

import json
import warnings

import numpy as np
import pytest
import torch

from rsfusion.cli.evaluate import main as evaluate_main
from rsfusion.cli.train import main as train_main

TINY = ["data.window=28", "data.batch_size=2", "data.samples_per_epoch=4",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "data.test_tiles=[2,4]",
        "data.eval_batch_size=4", "trainer.enable_progress_bar=false"]  # fmt: skip
MOBANET = ["model.name=mobanet", "model.backbone=vit_small_patch14_dinov2",
           "model.kwargs={backbone_kwargs: {depth: 2, embed_dim: 32, num_heads: 2}, "
           "proj_dim: 16, head_channels: 8}",
           "model.aux_loss.mode=hard", "model.masking.mode=mcrm"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vaihingen_root):
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY, *MOBANET, "trainer.max_steps=4",
                "trainer.limit_val_batches=1"]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def _evaluate(ckpt, out, root, *extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_main(["--ckpt", str(ckpt), "--cfg", "demo_baseline", "--out", str(out),
                              "--stride", "14", "--set", f"data.root={root}", *TINY, *MOBANET,
                              *extra])  # fmt: skip


def test_missing_modality_table(trained, tmp_path, vaihingen_root, capsys):
    assert _evaluate(trained, tmp_path / "eval", vaihingen_root) == 0
    table = capsys.readouterr().out
    assert "RGB + X" in table and "RGB only (X zeroed)" in table and "X only (RGB zeroed)" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    protocol = metrics.pop("protocol")
    assert set(metrics) == {"both", "rgb", "x"}
    assert protocol["window"] == 28 and protocol["stride"] == 14 and protocol["logits"] == "summed"
    assert all(0.0 <= m["mIoU"] <= 1.0 for m in metrics.values())
    support = {m: [c["Support"] for c in v["per_class"].values()] for m, v in metrics.items()}
    assert support["both"] == support["rgb"] == support["x"] and sum(support["both"]) > 0
    assert (tmp_path / "eval" / "reports" / "test_rgb_only_scores.json").is_file()


def test_slim_checkpoint_lacks_the_frozen_backbone(trained):
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    assert not any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    assert any(k.startswith("model.recipe.prompts.") for k in ckpt["state_dict"])
    assert len(ckpt["rsfusion"]["frozen_sha256"]) == 64


def test_the_checkpoint_fills_per_sample_metadata_for_prediction(trained):
    """Engine v2: prediction has no batch metadata; the model rebuilt from the checkpoint
    fills it with the card and X modality it was trained on."""
    from rsfusion.inference.predict import load_predictor

    model, meta = load_predictor(trained)
    assert model.default_meta == (meta.card, meta.x_modality) == ("vaihingen", "dsm")


def test_a_different_frozen_backbone_is_refused(trained, tmp_path, vaihingen_root, capsys):
    code = _evaluate(trained, tmp_path / "e2", vaihingen_root, "seed=7")  # other random init
    assert code == 2
    assert "frozen backbone with sha256" in capsys.readouterr().err


def _numpy_protocol(ckpt, root, tiles, window, stride):
    """ISPRS protocol written independently: numpy windows, summed logits, eroded labels."""
    import rasterio

    from rsfusion.inference.predict import load_predictor

    model, meta = load_predictor(ckpt)
    mean = np.asarray(meta.rgb_norm["mean"], np.float64).reshape(-1, 1, 1)
    std = np.asarray(meta.rgb_norm["std"], np.float64).reshape(-1, 1, 1)
    palette = np.asarray(meta.palette)
    k = len(palette)
    cm = np.zeros((k, k), np.int64)

    def offsets(size):
        starts = list(range(0, size - window + 1, stride))
        return starts if starts[-1] == size - window else [*starts, size - window]

    for area in tiles:
        with rasterio.open(root / "top" / f"top_mosaic_09cm_area{area}.tif") as f:
            rgb = (f.read().astype(np.float64) - mean) / std
        with rasterio.open(root / "dsm" / f"dsm_09cm_matching_area{area}.tif") as f:
            dsm = f.read().astype(np.float64)
        dsm = (dsm - dsm.min()) / (dsm.max() - dsm.min())
        with rasterio.open(root / f"top_mosaic_09cm_area{area}_noBoundary.tif") as f:
            colours = f.read().transpose(1, 2, 0)
        target = np.full(colours.shape[:2], 255)
        for i, c in enumerate(palette):
            target[(colours == c).all(-1)] = i
        h, w = target.shape
        total = np.zeros((k, h, w))
        for r in offsets(h):
            for c in offsets(w):
                a = torch.from_numpy(rgb[None, :, r : r + window, c : c + window]).float()
                b = torch.from_numpy(dsm[None, :, r : r + window, c : c + window]).float()
                with torch.no_grad():
                    total[:, r : r + window, c : c + window] += model(a, b)[0].double().numpy()
        pred = total.argmax(0)
        keep = target != 255
        cm += np.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
    five = [i for i in range(k) if meta.classes[i] != "clutter"]
    present = [i for i in five if gt[i] + pr[i] > 0]
    iou = tp / np.maximum(gt + pr - tp, 1)
    f1 = 2 * tp / np.maximum(gt + pr, 1)
    return {
        "OA": tp.sum() / cm.sum(),
        "mIoU": iou[present].mean(),
        "mF1": f1[present].mean(),
        "cm": cm,
    }


@pytest.fixture(scope="module")
def diverse(trained, tmp_path_factory):
    """The trained checkpoint with its trainable tensors jittered: 4 steps predict one class
    everywhere, and the protocol check needs a prediction with several classes."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    gen = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and "running" not in key:
            value.add_(0.5 * torch.randn(value.shape, generator=gen))
    path = tmp_path_factory.mktemp("diverse") / "jittered.ckpt"
    torch.save(ckpt, path)
    return path


def test_isprs_numbers_equal_an_independent_numpy_computation(diverse, tmp_path, vaihingen_root):
    trained, out = diverse, tmp_path / "eval"
    assert _evaluate(trained, out, vaihingen_root, "--inputs", "both", "--save-predictions") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = _numpy_protocol(trained, vaihingen_root, (2, 4), window=28, stride=14)
    assert np.array_equal(np.asarray(metrics["both"]["confusion"]), expected["cm"])
    for key in ("OA", "mIoU", "mF1"):
        assert metrics["both"][key] == pytest.approx(expected[key], abs=1e-12)
    assert 0 < expected["OA"] < 1 and (expected["cm"].sum(0) > 0).sum() >= 3  # several classes
    # the saved predictions are predict.py's files: on the tile's grid, with the colour table
    import rasterio

    for area in (2, 4):
        with (
            rasterio.open(out / f"top_mosaic_09cm_area{area}_classes.tif") as p,
            rasterio.open(vaihingen_root / "top" / f"top_mosaic_09cm_area{area}.tif") as t,
        ):
            assert (p.crs, p.transform, p.shape) == (t.crs, t.transform, t.shape)
            assert p.colormap(1)[0][:3] == (255, 255, 255)
    from PIL import Image

    with Image.open(out / "overlays" / "top_mosaic_09cm_area2.png") as png:
        assert png.text["Title"] == "top_mosaic_09cm_area2: RGB + X"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left


def test_overlays_have_a_title_and_a_legend_of_classes_and_errors(tmp_path):
    from PIL import Image

    from rsfusion.cli.evaluate import ERROR_COLOUR, save_overlay
    from rsfusion.models.checkpoint import CheckpointMeta

    meta = CheckpointMeta.from_dict({
        "card": "vaihingen", "rgb_modality": "irrg", "rgb_bands": ["nir", "red", "green"],
        "x_modality": None, "x_bands": [], "rgb_norm": {}, "x_norm": {},
        "classes": ["road", "house", "grass"], "palette": [[10, 20, 30], [40, 50, 60],
        [70, 80, 90]], "ignore_index": 255, "window": 16, "model": {"name": "x"}})  # fmt: skip
    image = np.random.default_rng(0).integers(0, 255, (3, 30, 40)).astype(np.float32)
    pred = np.zeros((30, 40), np.int64)
    target = np.ones((30, 40), np.int64)  # every pixel wrong
    path = save_overlay(image, pred, target, meta, tmp_path / "o.png", "area9: RGB + X")
    with Image.open(path) as png:
        assert png.text["Title"] == "area9: RGB + X"
        legend = json.loads(png.text["Legend"])
        pixels = np.asarray(png.convert("RGB"))
    assert [name for name, _ in legend[:3]] == ["road", "house", "grass"]
    assert legend[3][1] == list(ERROR_COLOUR) and "error" in legend[3][0]
    height = pixels.shape[0]
    assert height > 30 + 40 and pixels.shape[1] >= 3 * 40  # room for title and legend
    below = pixels[height - 40 :]  # the legend: a swatch of each class colour, and red
    for colour in ([10, 20, 30], [40, 50, 60], [70, 80, 90], list(ERROR_COLOUR)):
        assert (below == colour).all(-1).sum() >= 50, colour
    above = pixels[:20]
    assert (above != 255).any()  # the title is drawn


def test_natural_images_whole_multiscale_flip(nyudepthv2_root, tmp_path, capsys):
    nyu = [f"data.root={nyudepthv2_root}", "data.batch_size=2", "data.num_workers=0",
           "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]  # fmt: skip
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(["--cfg", "nyudepthv2_baseline", "--out", str(run), "--set", *nyu,
                           "trainer.max_steps=1", "trainer.limit_val_batches=1"]) == 0  # fmt: skip
        args = ["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--cfg", "nyudepthv2_baseline",
                "--set", *nyu]  # fmt: skip
        assert evaluate_main([*args, "--out", str(tmp_path / "a"), "--inputs", "both"]) == 0
        assert evaluate_main([*args, "--out", str(tmp_path / "b"), "--inputs", "both", "--flip",
                              "--scales", "0.75", "1.0", "1.25", "--save-predictions"]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "a" / "metrics.json").read_text())
    tta = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert tta["protocol"]["scales"] == [0.75, 1.0, 1.25] and tta["protocol"]["flip"]
    assert set(tta["both"]["per_image"]) == {"1", "8"}  # the two test images, whole
    support = [c["Support"] for c in plain["both"]["per_class"].values()]
    assert support == [c["Support"] for c in tta["both"]["per_class"].values()]
    from rsfusion.data.natural.nyudepthv2 import NYUDepthV2

    test = NYUDepthV2(nyudepthv2_root, "test", x="depth")
    labelled = sum(int((test[i]["mask"] != 255).sum()) for i in range(len(test)))
    assert sum(support) == labelled > 0  # every labelled pixel of the whole images, once
    from PIL import Image

    pred = Image.open(tmp_path / "b" / "predictions" / "1_classes.png")
    assert pred.mode == "P" and pred.size == (56, 40)
    assert (tmp_path / "b" / "overlays" / "1.png").is_file()


def _copy_without(root, tmp_path, *names):
    """A copy of the test dataset without the named files."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    for name in names:
        (copy / name).unlink()
    return copy


def test_missing_eroded_labels_are_refused_or_scored_as_asked_and_recorded(
    trained, tmp_path, vaihingen_root, capsys
):
    root = _copy_without(vaihingen_root, tmp_path, "top_mosaic_09cm_area4_noBoundary.tif")
    fast = ["--inputs", "both", "--overlays", "0"]
    assert _evaluate(trained, tmp_path / "refused", root, *fast) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 test tile(s) have no eroded labels: tile 4 (")
    assert "top_mosaic_09cm_area4_noBoundary.tif" in err and "--labels full" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "refused" / "metrics.json").exists()

    runs = {}
    for labels in ("eroded-or-full", "full"):
        out = tmp_path / labels
        assert _evaluate(trained, out, root, *fast, "--labels", labels) == 0
        runs[labels] = json.loads((out / "metrics.json").read_text())
    mixed, full = runs["eroded-or-full"], runs["full"]
    assert mixed["protocol"]["labels"] == "mixed"
    assert mixed["protocol"]["labels_per_tile"] == {"2": "eroded", "4": "full"}
    tiles = mixed["both"]["per_tile"]
    assert (tiles["2"]["labels"], tiles["2"]["label_file"]) == (
        "eroded", "top_mosaic_09cm_area2_noBoundary.tif"
    )  # fmt: skip
    assert (tiles["4"]["labels"], tiles["4"]["label_file"]) == ("full", "top_mosaic_09cm_area4.tif")
    assert full["protocol"]["labels"] == "full" and full["protocol"]["labels_requested"] == "full"
    assert {t["labels"] for t in full["both"]["per_tile"].values()} == {"full"}
    assert full["both"]["per_tile"]["4"] == tiles["4"]  # tile 4 scored the same way in both
    # the full labels keep the boundary pixels the eroded ones ignore: more pixels are scored
    support = {
        k: sum(c["Support"] for c in r["both"]["per_class"].values()) for k, r in runs.items()
    }
    assert support["full"] > support["eroded-or-full"]


def test_the_default_protocol_comes_from_command_line_config_or_the_methods_paper():
    import argparse

    from rsfusion.cli.evaluate import build_parser, tta_protocol
    from rsfusion.config import load_config

    def protocol(cfg: str, *argv: str, natural: bool = True):
        args = build_parser().parse_args(["--ckpt", "c", "--cfg", cfg, *argv])
        return tta_protocol(args, load_config(cfg), natural)

    ms = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    scales, flip, source = protocol("nyu_ktb")
    assert (scales, flip) == (ms, True) and source == {"scales": "ktb paper protocol",
                                                       "flip": "ktb paper protocol"}  # fmt: skip
    assert protocol("nyu_ktb", "--scales", "1", "--no-flip")[:2] == ([1.0], False)
    assert protocol("nyu_ktb", "--no-flip")[2]["flip"] == "command line"
    assert protocol("nyudepthv2_baseline")[:2] == ([1.0], False)  # others: single scale
    assert protocol("vaihingen_ktb", natural=False)[:2] == ([1.0], False)  # ISPRS protocol
    assert protocol("demo_ktb", natural=False)[:2] == ([1.0], False)  # the demo table's
    # a config that states its protocol (data.eval_scales / eval_flip, once the schema has them)
    cfg = load_config("nyu_ktb")
    data = argparse.Namespace(**{**vars(cfg.data), "eval_scales": [1.0, 1.5], "eval_flip": False})
    args = build_parser().parse_args(["--ckpt", "c", "--cfg", "nyu_ktb"])
    stated = tta_protocol(args, argparse.Namespace(data=data, model=cfg.model), True)
    assert stated == ([1.0, 1.5], False, {"scales": "config", "flip": "config"})


def test_a_ktb_checkpoint_is_scored_multiscale_flip_on_natural_images(nyudepthv2_root, tmp_path):
    tiny = ["model.backbone=swin_tiny_patch4_window7_224", "model.weights=null",
            "model.kwargs.backbone_kwargs={embed_dim: 16, depths: [1, 1, 2, 1], "
            "num_heads: [1, 2, 2, 4]}", "model.kwargs.head_dim=16", "model.kwargs.aux_head_dim=8",
            f"data.root={nyudepthv2_root}", "data.batch_size=2", "data.num_workers=0",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]  # fmt: skip
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(["--cfg", "nyu_ktb", "--out", str(run), "--set", *tiny,
                           "trainer.max_steps=1", "trainer.limit_val_batches=1"]) == 0  # fmt: skip
        args = ["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--cfg", "nyu_ktb",
                "--inputs", "both", "--overlays", "0", "--set", *tiny]  # fmt: skip
        assert evaluate_main([*args, "--out", str(tmp_path / "paper")]) == 0
        assert evaluate_main([*args, "--out", str(tmp_path / "ss"), "--scales", "1",
                              "--no-flip"]) == 0  # fmt: skip
    paper = json.loads((tmp_path / "paper" / "metrics.json").read_text())["protocol"]
    single = json.loads((tmp_path / "ss" / "metrics.json").read_text())["protocol"]
    assert paper["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and paper["flip"] is True
    assert paper["tta_source"] == {"scales": "ktb paper protocol", "flip": "ktb paper protocol"}
    assert single["scales"] == [1.0] and single["flip"] is False
    assert single["tta_source"] == {"scales": "command line", "flip": "command line"}
