"""scripts/train.py end to end: dry run, a 3-step run from another directory, bad input, the
memory check."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning  # noqa: F401  (imported first here: its log handler outlives each test's capture)
import pytest
import torch

from rsfusion.cli.train import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.window=32",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.train_tiles=[1,3,5]",
    "data.val_tiles=[2,4]",
    "data.eval_batch_size=4",
]


def test_dry_run_from_another_directory(tmp_path, monkeypatch, capsys, vaihingen_root):
    monkeypatch.chdir(tmp_path)
    code = main(
        ["--cfg", "vaihingen_baseline", "--dry-run", "--set", f"data.root={vaihingen_root}"]
    )
    out = capsys.readouterr().out
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("params: "))
    total = int(line.split("total=")[1].split()[0])
    trainable = int(line.split("trainable=")[1])
    assert total == trainable > 1_000_000
    assert "data train: 3 of 16 tiles" in out and "missing" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_three_steps_write_last_ckpt_with_metadata(tmp_path, monkeypatch, vaihingen_root):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "--cfg",
                "demo_baseline",
                "--set",
                f"data.root={vaihingen_root}",
                *TINY,
                "trainer.max_steps=3",
                "trainer.limit_val_batches=2",
                "trainer.enable_progress_bar=false",
            ]
        )
    assert code == 0
    runs = list((tmp_path / "runs" / "demo_baseline").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.yaml").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # max_steps stopped mid-epoch, before any validation
    meta = ckpt["rsfusion"]
    assert meta["classes"][-1] == "clutter" and meta["rgb_bands"] == ["nir", "red", "green"]
    assert meta["config"]["data"]["window"] == 32
    assert not list(run.rglob("*.partial"))
    scores = json.loads((run / "reports" / "val_scores.json").read_text())
    assert 0.0 <= scores["mIoU"] <= 1.0 and set(scores["per_class"]) >= {"building", "clutter"}
    assert (run / "reports" / "val_confusion.png").stat().st_size > 1000


def test_unknown_key_fails_with_suggestion(capsys):
    assert main(["--cfg", "demo_baseline", "--dry-run", "--set", "data.widnow=3"]) == 2
    assert "did you mean 'data.window'" in capsys.readouterr().err


def test_script_entry_point_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--cfg", "vaihingen_rgb", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "params: total=" in proc.stdout


def test_bf16_mixed_precision_and_clipping_from_the_config(tmp_path, vaihingen_root):
    out = tmp_path / "bf16"
    args = ["--cfg", "demo_baseline", "--out", str(out), "--set", f"data.root={vaihingen_root}",
            *TINY, "trainer.max_steps=2", "trainer.limit_val_batches=1",
            "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["rsfusion"]["config"]["trainer"]["precision"] == "bf16-mixed"
    weights = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight")]
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights)


def test_a_malformed_natural_sample_is_an_error_naming_the_file(nyudepthv2_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "nyu"
    shutil.copytree(nyudepthv2_root, root, ignore=shutil.ignore_patterns("data.py"))
    broken = sorted((root / "Label").glob("*.png"))[0]
    broken.write_bytes(b"not a png at all")
    code = main(["--cfg", "nyudepthv2_baseline", "--out", str(tmp_path / "run"), "--set",
                 f"data.root={root}", "data.batch_size=1", "data.num_workers=0",
                 "trainer.accelerator=cpu", "trainer.max_steps=3",
                 "trainer.enable_progress_bar=false"])  # fmt: skip
    assert code == 2
    assert broken.name in capsys.readouterr().err


# --- refused before anything is built: output folder, devices, trainer settings -----------
def _refused(args, capsys) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_an_out_that_is_a_file_or_under_one_is_refused_before_the_model(tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    base = ["--cfg", "demo_baseline", "--set", "data.root=/nonexistent"]  # never reached
    line = _refused([*base, "--out", str(taken)], capsys)
    assert f"--out {taken} is an existing file, not a folder" in line
    line = _refused([*base, "--out", str(taken / "run")], capsys)
    assert f"{taken} is a file" in line
    assert taken.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [taken]


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a place no one can write to")
def test_an_unwritable_out_is_refused_before_the_model(capsys):
    line = _refused(["--cfg", "demo_baseline", "--out", "/sys/rsfusion-run"], capsys)
    assert "--out /sys/rsfusion-run: cannot write in /sys" in line
    assert not Path("/sys/rsfusion-run").exists()


def test_an_unwritable_out_is_refused_without_root(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    line = _refused(["--cfg", "demo_baseline", "--out", str(locked / "run")], capsys)
    assert f"cannot write in {locked}" in line and not list(locked.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_is_refused_at_once(accelerator, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--cfg", "demo_baseline", "--out", str(out), "--set", "data.root=/nonexistent",
            f"trainer.accelerator={accelerator}"]  # fmt: skip
    line = _refused(args, capsys)
    assert f"trainer.accelerator={accelerator}, but torch sees no CUDA GPU" in line
    assert "trainer.accelerator=cpu" in line and not out.exists()


def test_trainer_settings_lightning_refuses_leave_no_run_folder(tmp_path, vaihingen_root, capsys):
    out = tmp_path / "a" / "run"
    args = ["--cfg", "demo_baseline", "--out", str(out), "--set", f"data.root={vaihingen_root}",
            *TINY, "trainer.devices=0"]  # fmt: skip
    line = _refused(args, capsys)
    assert "Lightning refuses the trainer settings (" in line and "trainer.devices=0" in line
    assert not (tmp_path / "a").exists()  # the folders it made are gone again


def test_a_checkpoint_of_other_model_kwargs_is_refused_on_resume(tmp_path, vaihingen_root, capsys):
    first = tmp_path / "first"
    data = ["--set", f"data.root={vaihingen_root}", *TINY, "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--cfg", "demo_baseline", "--out", str(first), *data]) == 0
    ckpt = first / "checkpoints" / "last.ckpt"
    other = "model.kwargs={decoder_channels: [64, 32, 16, 8, 4]}"
    line = _refused(["--cfg", "demo_baseline", "--out", str(tmp_path / "second"), *data, other,
                     "--resume", str(ckpt)], capsys)  # fmt: skip
    assert f"--resume {ckpt}: it was built with other model settings" in line
    assert "model.kwargs differ in ['decoder_channels']" in line


# --- the memory check: measured before the run folder is made ------------------------------
def _scripted_steps(monkeypatch, sizes_mib):
    """Steps measured as ``sizes_mib`` (batch 1, then 2) per run; the budget: 1000 MiB."""
    from rsfusion.training import memory

    calls: list[int] = []

    def step_bytes(run, device):
        run()  # the real step still runs
        calls.append(1)
        return sizes_mib[(len(calls) - 1) % len(sizes_mib)] * memory.MiB

    monkeypatch.setattr(memory, "step_bytes", step_bytes)
    budget = memory.Budget(1000 * memory.MiB, "test budget")
    monkeypatch.setattr(memory, "available_memory", lambda device: budget)
    return calls


def test_a_run_that_does_not_fit_stops_with_the_numbers_and_the_batch_that_fits(
    tmp_path, vaihingen_root, capsys, monkeypatch
):
    calls = _scripted_steps(monkeypatch, [300, 500])  # 100 MiB + 200 MiB per sample
    out = tmp_path / "a" / "run"
    base = ["--cfg", "demo_baseline", "--out", str(out), "--set", f"data.root={vaihingen_root}",
            *TINY, "trainer.max_steps=1", "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    line = _refused([*base, "data.batch_size=6"], capsys)
    assert len(calls) == 2  # batch 1, then batch 2 (6 x the batch-1 cost did not fit)
    assert "a training step does not fit in memory: data.batch_size=6 at 32x32 px" in line
    assert "300 MiB at batch 1" in line and "500 MiB at batch 2: 200 MiB per sample" in line
    assert "1000 MiB is available (test budget)" in line and "--no-memory-check" in line
    best = int(re.search(r"--set data\.batch_size=(\d+) ", line)[1])
    assert 1 <= best < 6
    steps = -(-6 // best)
    assert f"trainer.accumulate_grad_batches={steps}" in line
    assert not (tmp_path / "a").exists()  # refused before any folder was made

    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, f"data.batch_size={best}"]) == 0
    printed = capsys.readouterr().out
    assert f"memory check: a training step at batch {best} needs about" in printed
    assert "available (test budget): fits" in printed
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_no_memory_check_trains_without_measuring(tmp_path, vaihingen_root, capsys, monkeypatch):
    calls = _scripted_steps(monkeypatch, [5000])  # would never fit
    out = tmp_path / "run"
    args = ["--cfg", "demo_baseline", "--out", str(out), "--no-memory-check", "--set",
            f"data.root={vaihingen_root}", *TINY, "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    assert not calls and "memory check" not in capsys.readouterr().out
    assert (out / "checkpoints" / "last.ckpt").is_file()
