"""Hostile and broken files at every entry point that reads one: a checkpoint or weights file
carrying a pickled payload, an empty or truncated file, NaN weights. Each is refused with one
``error:`` line naming the file (exit 2), and the payload never runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning  # noqa: F401  (imported first here: its log handler outlives each test's capture)
import pytest
import torch

from rsfusion.cli.evaluate import main as evaluate_main
from rsfusion.cli.predict import main as predict_main
from rsfusion.cli.train import main as train_main

TINY = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=2",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "data.test_tiles=[2]",
        "data.eval_batch_size=4", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false"]  # fmt: skip


def error_line(err: str) -> str:
    """The one ``error:`` line of a tool's stderr (Lightning's INFO lines may come before it);
    no traceback."""
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


class Payload:
    """Creates ``marker`` when unpickled: what a hostile file carries (any code could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vaihingen_root) -> Path:
    """A genuine one-step checkpoint of demo_baseline."""
    out = tmp_path_factory.mktemp("run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY, "trainer.max_steps=1"]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def broken(kind: str, good: Path, path: Path, marker: Path) -> Path:
    """``good`` made hostile or broken: a payload key, empty, cut in half, one tensor NaN."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        saved = torch.load(good, map_location="cpu", weights_only=True)
        if kind == "payload":  # a valid checkpoint with one extra key
            saved["extra"] = Payload(marker)
        else:
            name = next(k for k, v in saved["state_dict"].items() if v.is_floating_point())
            saved["state_dict"][name] = saved["state_dict"][name].clone().fill_(float("nan"))
        torch.save(saved, path)
    return path


def _run(entry: str, ckpt: Path, tmp: Path, root: Path) -> int:
    data = ["--set", f"data.root={root}", *TINY, "trainer.max_steps=2"]
    argv = {
        "evaluate": ["--ckpt", str(ckpt), "--cfg", "demo_baseline", "--out", str(tmp / "out"),
                     *data],
        "resume": ["--cfg", "demo_baseline", "--out", str(tmp / "out"), "--resume", str(ckpt),
                   *data],
        "init-from": ["--cfg", "demo_baseline", "--out", str(tmp / "out"), "--init-from",
                      str(ckpt), *data],
        "predict": ["--ckpt", str(ckpt), "--rgb", str(root / "top" / "top_mosaic_09cm_area2.tif"),
                    "--x", str(root / "dsm" / "dsm_09cm_matching_area2.tif"), "--out",
                    str(tmp / "out")],
    }[entry]  # fmt: skip
    main = {"evaluate": evaluate_main, "predict": predict_main}.get(entry, train_main)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


EXPECTED = {
    "payload": "holds pickled Python objects (io.open)",
    "empty": "is empty (0 bytes)",
    "truncated": "it is truncated, corrupt, or not a torch file",
    "nonfinite": "tensors hold NaN or inf",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("entry", ["evaluate", "resume", "init-from", "predict"])
def test_a_hostile_or_broken_checkpoint_is_one_error_line(
    entry, kind, trained, tmp_path, vaihingen_root, capsys
):
    marker = tmp_path / "MARKER"
    bad = broken(kind, trained, tmp_path / f"{kind}.ckpt", marker)
    capsys.readouterr()
    assert _run(entry, bad, tmp_path, vaihingen_root) == 2
    line = error_line(capsys.readouterr().err)
    assert str(bad) in line and EXPECTED[kind] in line, line
    assert not marker.exists()  # the payload never ran
    if entry in ("resume", "init-from"):  # refused before the run folder was made
        assert not (tmp_path / "out").exists()


def test_the_payload_is_live_when_unpickled_unsafely(trained, tmp_path):
    """The control: the same file does run code under ``weights_only=False``."""
    marker = tmp_path / "MARKER"
    bad = broken("payload", trained, tmp_path / "payload.ckpt", marker)
    torch.load(bad, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "setting, what, expected",
    [
        ("model.weights", "weights", "holds pickled Python objects (io.open)"),
        ("model.kwargs.maclip", "MA-CLIP", "holds pickled Python objects (io.open)"),
    ],
)
def test_a_payload_in_backbone_weights_or_an_maclip_file_never_runs(
    setting, what, expected, tmp_path, vaihingen_root, capsys
):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    state = {"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7), "x": Payload(marker)}
    if what == "MA-CLIP":
        state = {"format": "rsfusion-maclip", "version": 1, "state_dict": state}
    torch.save(state, evil)
    argv = ["--cfg", "demo_segrgbx", "--out", str(tmp_path / "out"), "--set",
            f"data.root={vaihingen_root}", *TINY, "trainer.max_steps=1", f"{setting}={evil}"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert str(evil) in line and expected in line, line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty run folder


def test_resume_reads_every_file_as_data(trained, tmp_path, vaihingen_root, monkeypatch):
    """Lightning re-reads the --resume file itself: with ``weights_only=True`` too."""
    seen: list[object] = []
    load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert _run("resume", trained, tmp_path, vaihingen_root) == 0
    assert len(seen) >= 2 and all(w is True for w in seen), seen
    resumed = load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2


def test_a_python_tag_in_a_card_named_by_a_checkpoint_is_refused(
    trained, tmp_path, vaihingen_root, capsys
):
    """A checkpoint may name its dataset card by path; that YAML is read as plain data."""
    import yaml

    marker = tmp_path / "MARKER"
    card = tmp_path / "evil.yaml"
    card.write_text(f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    saved = torch.load(trained, map_location="cpu", weights_only=True)
    saved["rsfusion"]["card"] = str(card)
    ckpt = tmp_path / "card.ckpt"
    torch.save(saved, ckpt)
    argv = ["--ckpt", str(ckpt), "--rgb", str(vaihingen_root / "top"), "--x",
            str(vaihingen_root / "dsm"), "--out", str(tmp_path / "out")]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert predict_main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert f"dataset card {card} (line 1, column 7): the YAML tag !!python/object/apply" in line
    assert not marker.exists()
    yaml.unsafe_load(card.read_text())  # the control: an unsafe loader runs it
    assert marker.exists()
