"""EvalOptions and the test-time augmentation protocol, as the command line and Python set them."""

from __future__ import annotations

import pytest

from rsfusion.config import load_config
from rsfusion.errors import ConfigError
from rsfusion.evaluation.protocol import EvalOptions, format_modality_table, tta_protocol


def test_the_command_lines_options_are_eval_options():
    from rsfusion.cli.evaluate import build_parser

    args = build_parser().parse_args(["--ckpt", "c", "--cfg", "demo_baseline", "--stride", "16",
                                      "--inputs", "rgb", "--scales", "1", "1.5", "--flip"])  # fmt: skip
    options = EvalOptions.from_namespace(args)
    assert options == EvalOptions(stride=16, inputs=["rgb"], scales=[1.0, 1.5], flip=True)
    assert EvalOptions() == EvalOptions.from_namespace(
        build_parser().parse_args(["--ckpt", "c", "--cfg", "demo_baseline"])
    )  # the defaults agree
    assert EvalOptions(inputs="x", dataset="deliver").inputs == ["x"]  # one name: a list of one


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"split": "train"}, "--split train: use test or val"),
     ({"inputs": ["rgbx"]}, "--inputs rgbx: use both, rgb or x"),
     ({"labels": "coarse"}, "--labels coarse: use eroded, full, eroded-or-full"),
     ({"precision": "fp8"}, "--precision fp8: use auto, fp32, bf16 or fp16")],
)  # fmt: skip
def test_values_outside_the_choices_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        EvalOptions(**settings).check()


def test_tta_comes_from_the_options_the_config_or_the_paper():
    ktb = load_config("nyu_ktb")
    assert tta_protocol(EvalOptions(), ktb, natural=True)[:2] == ([0.5, 0.75, 1.0, 1.25, 1.5,
                                                                    1.75], True)  # fmt: skip
    scales, flip, source = tta_protocol(EvalOptions(scales=[1], flip=False), ktb, natural=True)
    assert (scales, flip, source) == ([1], False, {"scales": "command line",
                                                   "flip": "command line"})  # fmt: skip
    assert tta_protocol(EvalOptions(), ktb, natural=False)[2] == {"scales": "default",
                                                                  "flip": "default"}  # fmt: skip


def test_the_modality_table_has_a_row_per_mode_in_percent():
    rows = {"both": {"OA": 0.5, "mF1": 0.25, "mIoU": 0.125}, "x": {"OA": 1, "mF1": 1, "mIoU": 1}}
    lines = format_modality_table(rows).splitlines()
    assert lines[1].split()[-3:] == ["50.00", "25.00", "12.50"]
    assert lines[2].startswith("X only (RGB zeroed)") and lines[2].endswith("100.00")
