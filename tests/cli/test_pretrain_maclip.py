"""scripts/pretrain_maclip.py end to end on the fake releases with a tiny CLIP, and its errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rsfusion.cli.pretrain_maclip import main
from rsfusion.data.captions import read_captions
from rsfusion.models.maclip import MACLIP
from tests.models.clip_fixtures import write_tiny_clip

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clip_file(tmp_path: Path) -> Path:
    return write_tiny_clip(tmp_path / "clip" / "tiny.pt")


def run(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture tiles' CRS notes
        return main(list(args))


def test_template_captions_on_the_isprs_fixture(tmp_path, monkeypatch, capsys, clip_file,
                                                vaihingen_root):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "maclip"
    code = run("--cfg", "demo_baseline", "--clip", str(clip_file), "--template-captions",
               "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
               "--set", f"data.root={vaihingen_root}", "data.window=32",
               "data.train_tiles=[1,3,5]")  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vaihingen: 12 samples, X 'dsm' -> LoRA 'dsm'" in printed
    assert "epoch 2/2: loss" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "maclip"]  # nothing in cwd
    assert sorted(p.name for p in out.iterdir()) == ["captions", "maclip.pt", "maclip_log.json"]
    log = json.loads((out / "maclip_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(math.isfinite(e["loss"]) and e["steps"] == 3 for e in log["epochs"])
    assert log["pool"] == ["dsm"] and log["trainable_parameters"] == 2 * 2 * 2 * 8 * 32
    captions = read_captions(out / "captions" / "vaihingen.tsv")
    assert len(captions) == 12 and captions["1:8:16"].startswith("an aerial photo with ")
    model = MACLIP.load(out / "maclip.pt")
    assert model.modalities == ("dsm",) and model.meta["final_loss"] == log["epochs"][-1]["loss"]


def test_a_captions_file_on_the_nyu_fixture(tmp_path, capsys, clip_file, nyudepthv2_root):
    caps = tmp_path / "nyu.tsv"
    caps.write_text("2\ta kitchen\n3\ta bedroom\n4\ta bathroom\n", encoding="utf-8")
    out = tmp_path / "out"
    code = run("--cfg", "nyudepthv2_baseline", "--clip", str(clip_file), "--captions",
               f"nyudepthv2={caps}", "--out", str(out), "--epochs", "1", "--batch-size", "3",
               "--set", f"data.root={nyudepthv2_root}")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    log = json.loads((out / "maclip_log.json").read_text())
    assert log["datasets"]["nyudepthv2"]["captions"] == str(caps)
    assert not (out / "captions").exists()  # user captions are not copied
    assert MACLIP.load(out / "maclip.pt").modalities == ("depth",)


def test_joint_sources_share_batches_and_get_one_lora_each(tmp_path, capsys, clip_file,
                                                          nyudepthv2_root, vaihingen_root):  # fmt: skip
    joint = (f"data.joint={{nyu: {{card: nyudepthv2, root: {nyudepthv2_root}, x: depth}}, "
             f"isprs: {{card: vaihingen, root: {vaihingen_root}, x: dsm, window: 32, "
             "train_tiles: [1, 3, 5]}}")  # fmt: skip
    out = tmp_path / "out"
    code = run("--cfg", "nyudepthv2_baseline", "--clip", str(clip_file), "--template-captions",
               "--out", str(out), "--epochs", "1", "--batch-size", "5", "--set", joint,
               "data.num_workers=0")  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "nyu: 3 samples, X 'depth'" in printed and "isprs: 12 samples, X 'dsm'" in printed
    assert sorted(p.name for p in (out / "captions").iterdir()) == ["isprs.tsv", "nyu.tsv"]
    assert MACLIP.load(out / "maclip.pt").modalities == ("depth", "dsm")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--captions", "nyudepthv2={caps}"], "nyu.tsv: no caption for 1 of 3 samples, e.g. ['4']"),
        (["--captions", "mfnet={caps}"], "no dataset 'mfnet'; datasets: ['nyudepthv2']"),
        ([], "no captions for dataset 'nyudepthv2'"),
        (["--template-captions", "--set", "data.x=rgb"], "no LoRA pool entry for modality 'rgb'"),
    ],
)
def test_user_errors_are_one_error_line(tmp_path, capsys, clip_file, nyudepthv2_root, extra,
                                        message):  # fmt: skip
    caps = tmp_path / "nyu.tsv"
    caps.write_text("2\ta kitchen\n3\ta bedroom\n", encoding="utf-8")
    args = ["--cfg", "nyudepthv2_baseline", "--clip", str(clip_file), "--out",
            str(tmp_path / "out"), "--set", f"data.root={nyudepthv2_root}"]  # fmt: skip
    code = run(*args, *[e.format(caps=caps) for e in extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "maclip.pt").exists()


def test_the_script_refuses_a_hub_name_offline(tmp_path, nyudepthv2_root):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pretrain_maclip.py"), "--cfg",
         "nyudepthv2_baseline", "--clip", "ViT-B-32:openai", "--template-captions", "--out",
         str(tmp_path / "out"), "--set", f"data.root={nyudepthv2_root}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: CLIP weights 'ViT-B-32:openai' cannot be downloaded")
    assert "pass the local file" in proc.stderr and proc.stderr.count("\n") == 1
