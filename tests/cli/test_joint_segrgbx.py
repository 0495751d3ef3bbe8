"""SegRGB-X's generalist path end to end on the fake releases of the paper's five datasets plus
the demo scene: MA-CLIP pre-training, joint training (eq. 8), per-dataset evaluation in each
dataset's own classes, prediction with --dataset, and fine-tuning with --init-from."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import rasterio

from rsfusion.catalog import load_card
from rsfusion.cli.evaluate import main as evaluate_main
from rsfusion.cli.predict import main as predict_main
from rsfusion.cli.pretrain_maclip import main as pretrain_main
from rsfusion.cli.train import main as train_main
from rsfusion.data.demo import make_demo_scene
from tests.models.clip_fixtures import write_tiny_clip

DATA = Path(__file__).parents[1] / "data"
SOURCES = {  # source: (card, X)
    "deliver": ("deliver", "event"),
    "mfnet": ("mfnet", "thermal"),
    "nyu": ("nyudepthv2", "depth"),
    "rgbp": ("zju_rgbp", "aolp"),
    "urbanlf": ("urbanlf", "view_1_1"),
    "demo": ("vaihingen", "dsm"),
}
TINY_MODEL = (
    "{head_channels: 16, embed_dim: 16, dsrm_heads: 2, backbone_kwargs: "
    "{embed_dims: [8, 16, 40, 64], depths: [1, 1, 1, 1], num_heads: [1, 2, 5, 8]}}"
)


def write_config(folder: Path, demo: Path) -> Path:
    path = folder / "joint_tiny.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            base: joint_segrgbx.yaml
            data:
              batch_size: 2
              eval_batch_size: 1
              num_workers: 0
              crop: [32, 32]
              joint:
                deliver: {{root: {DATA / "deliver"}}}
                mfnet: {{root: {DATA / "mfnet"}}}
                nyu: {{root: {DATA / "nyudepthv2"}, scale_range: [0.5, 2.0]}}
                rgbp: {{root: {DATA / "zju_rgbp"}}}
                urbanlf: {{root: {DATA / "urbanlf"}}}
                demo: {{card: vaihingen, root: {demo}, x: dsm, train_tiles: [1], val_tiles: [2],
                        test_tiles: [2], window: 32, samples_per_epoch: 4, scale_range: null,
                        crop: null, ratio: 500}}
            model:
              weights: null
              kwargs: {TINY_MODEL}
            trainer:
              max_epochs: 1
              limit_train_batches: 4
              log_every_n_steps: 1
              accelerator: cpu
              enable_progress_bar: false
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("joint_segrgbx")
    demo = make_demo_scene(folder / "demo", areas=(1, 2), size=48)
    cfg = write_config(folder, demo)
    clip = write_tiny_clip(folder / "tiny_clip.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pretrain_main(["--cfg", str(cfg), "--clip", str(clip), "--template-captions",
                              "--epochs", "1", "--max-samples", "4", "--batch-size", "2",
                              "--out", str(folder / "maclip")]) == 0  # fmt: skip
        maclip = folder / "maclip" / "maclip.pt"
        run = folder / "run"
        assert train_main(["--cfg", str(cfg), "--out", str(run), "--set",
                           f"model.kwargs.maclip={maclip}"]) == 0  # fmt: skip
    return {"cfg": cfg, "maclip": maclip, "ckpt": run / "checkpoints" / "last.ckpt",
            "run": run, "demo": demo, "folder": folder}  # fmt: skip


def test_joint_training_validates_every_dataset_in_its_own_classes(joint: dict[str, Path]):
    reports = joint["run"] / "reports"
    for name, (card, _) in SOURCES.items():
        scores = json.loads((reports / f"val_{name}_scores.json").read_text())
        assert list(scores["per_class"]) == load_card(card).class_names, name
    metrics = (joint["run"] / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/mIoU" in metrics and all(f"val/{n}/mIoU" in metrics for n in SOURCES)
    assert "train/loss_remap" in metrics


def test_evaluate_scores_each_dataset_in_its_own_label_space(
    joint: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = evaluate_main(["--ckpt", str(joint["ckpt"]), "--cfg", str(joint["cfg"]),
                              "--out", str(out), "--inputs", "both", "--stride", "16",
                              "--overlays", "0", "--set",
                              f"model.kwargs.maclip={joint['maclip']}"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["datasets"]) == set(SOURCES)
    for name, (card, _) in SOURCES.items():
        confusion = summary["datasets"][name]["both"]["confusion"]
        assert len(confusion) == load_card(card).num_classes, name  # own classes, not unified
        assert (out / name / "metrics.json").is_file()
    mean = sum(r["both"]["mIoU"] for r in summary["datasets"].values()) / len(SOURCES)
    assert summary["mean"]["both"]["mIoU"] == pytest.approx(mean)
    assert "mean" in capsys.readouterr().out


def test_predict_needs_and_uses_the_dataset(
    joint: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    rgb = joint["demo"] / "top" / "top_mosaic_09cm_area2.tif"
    dsm = joint["demo"] / "dsm" / "dsm_09cm_matching_area2.tif"
    args = ["--ckpt", str(joint["ckpt"]), "--rgb", str(rgb), "--x", str(dsm), "--window", "32"]
    assert predict_main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--dataset" in err and "demo" in err
    assert predict_main([*args, "--out", str(tmp_path / "b"), "--dataset", "demo"]) == 0
    written = next((tmp_path / "b").glob("*_classes.tif"))
    with rasterio.open(written) as src, rasterio.open(rgb) as ref:
        assert src.crs == ref.crs and src.transform == ref.transform  # on the map
        assert int(src.read(1).max()) < load_card("vaihingen").num_classes  # its own classes
    assert predict_main([*args, "--out", str(tmp_path / "c"), "--dataset", "demo",
                         "--modality", "sonar"]) == 2  # fmt: skip
    assert "sonar" in capsys.readouterr().err


def test_fine_tune_from_the_generalist(joint: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    """Table II: one dataset, initialised from the generalist (same model, unified classes)."""
    cfg = joint["folder"] / "mfnet_tiny.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            base: mfnet_segrgbx.yaml
            data:
              batch_size: 2
              num_workers: 0
              crop: [32, 32]
              joint:
                mfnet: {{root: {DATA / "mfnet"}}}
            model:
              weights: null
              kwargs: {TINY_MODEL}
            trainer: {{max_epochs: 1, max_steps: 1, accelerator: cpu, enable_progress_bar: false}}
            """
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = train_main(["--cfg", str(cfg), "--out", str(joint["folder"] / "ft"),
                           "--init-from", str(joint["ckpt"]),
                           "--set", f"model.kwargs.maclip={joint['maclip']}"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "initialised from" in out.out
    assert (joint["folder"] / "ft" / "reports" / "val_mfnet_scores.json").is_file()
