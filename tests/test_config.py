"""Tests for rsfusion.config: inheritance, overrides, validation messages and round trips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rsfusion.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    config_to_dict,
    load_config,
    resolve_config_path,
    save_config,
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults_and_name_from_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "my_exp.yaml", "seed: 7\n")
    cfg = load_config(path)
    assert cfg.name == "my_exp"
    assert cfg.seed == 7
    assert cfg.data == DataConfig()
    assert cfg.optim.scheduler == "poly"
    assert cfg.trainer == {}


def test_name_may_not_be_set_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "exp.yaml", "name: other\n")
    with pytest.raises(ConfigError, match="comes from the config file's name") as err:
        load_config(path)
    assert "exp.yaml" in str(err.value)


def test_inheritance_chain_deep_merge_and_base_removed(tmp_path: Path) -> None:
    write(
        tmp_path,
        "root.yaml",
        """
        seed: 1
        data: {window: 128, batch_size: 4, augment: {hflip: 0.1, vflip: 0.2}}
        model: {backbone: resnet34}
        """,
    )
    write(
        tmp_path,
        "mid.yaml",
        "base: root.yaml\ndata: {window: 512, augment: {vflip: 0.9}}\n",
    )
    # a second base in a sub-folder, resolved relative to the including file; merged left to right
    write(tmp_path, "parts/opt.yaml", "optim: {lr: 0.5}\nmodel: {backbone: resnet50}\n")
    leaf = write(tmp_path, "leaf.yaml", "base: [mid.yaml, parts/opt.yaml]\nseed: 3\n")
    cfg = load_config(leaf)
    assert cfg.name == "leaf"
    assert cfg.seed == 3
    assert cfg.data.window == 512  # mid over root
    assert cfg.data.batch_size == 4  # kept from root: dicts merge
    assert (cfg.data.augment.hflip, cfg.data.augment.vflip) == (0.1, 0.9)
    assert cfg.model.backbone == "resnet50"  # the later base wins
    assert cfg.optim.lr == 0.5
    assert "base" not in config_to_dict(cfg)


def test_base_falls_back_to_configs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "shipped"
    write(shipped, "common.yaml", "data: {window: 64}\n")
    monkeypatch.setattr("rsfusion.config.configs_dir", lambda: shipped)
    leaf = write(tmp_path, "exp/leaf.yaml", "base: common\n")
    assert load_config(leaf).data.window == 64
    assert resolve_config_path("common") == (shipped / "common.yaml").resolve()
    with pytest.raises(ConfigError, match="did you mean 'common'"):
        resolve_config_path("comon")


def test_list_replaced_not_merged(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "data: {train_tiles: [1, 3, 5], augment: {scale: [0.5, 2.0]}}\n")
    path = write(tmp_path, "b.yaml", "base: a.yaml\ndata: {train_tiles: [7]}\n")
    cfg = load_config(path)
    assert cfg.data.train_tiles == ["7"]
    assert cfg.data.augment.scale == [0.5, 2.0]


def test_base_cycle_is_named(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: c.yaml\n")
    write(tmp_path, "c.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="base cycle") as err:
        load_config(tmp_path / "a.yaml")
    msg = str(err.value)
    assert msg.index("a.yaml") < msg.index("b.yaml") < msg.index("c.yaml")


def test_missing_base_names_including_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"base of .*a\.yaml.*nowhere"):
        load_config(path)


def test_overrides_nested_lists_and_null(tmp_path: Path) -> None:
    path = write(
        tmp_path, "exp.yaml", "model: {weights: imagenet}\ndata: {augment: {hflip: 0.3}}\n"
    )
    cfg = load_config(
        path,
        [
            "trainer.max_steps=3",
            "trainer.limit_val_batches=2",
            "data.root=/data/x",
            "data.train_tiles=[1,3]",
            "model.weights=null",
            "data.augment.scale=[0.5,2.0]",
            "optim.lr=1e-4",
        ],
    )
    assert cfg.trainer == {"max_steps": 3, "limit_val_batches": 2}
    assert cfg.data.root == "/data/x"
    assert cfg.data.train_tiles == ["1", "3"]
    assert cfg.model.weights is None
    assert cfg.data.augment.scale == [0.5, 2.0]
    assert cfg.data.augment.hflip == 0.3  # untouched sibling kept
    assert cfg.optim.lr == pytest.approx(1e-4)


def test_malformed_override_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "exp.yaml", "")
    with pytest.raises(ConfigError, match="malformed override 'data.window'"):
        load_config(path, ["data.window"])


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "data:\n  widnow: 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "unknown key 'data.widnow'" in msg
    assert "x.yaml" in msg
    assert "did you mean 'data.window'?" in msg


def test_unknown_key_from_override_names_override(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "seed: 1\n")
    path = write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optim.shceduler=cosine"])
    msg = str(err.value)
    assert "override 'optim.shceduler=cosine'" in msg
    assert "did you mean 'optim.scheduler'?" in msg


def test_error_names_base_file_it_came_from(tmp_path: Path) -> None:
    write(tmp_path, "base_bad.yaml", "model: {backbon: resnet18}\n")
    path = write(tmp_path, "leaf.yaml", "base: base_bad.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"base_bad\.yaml; did you mean 'model.backbone'"):
        load_config(path)


def test_wrong_type_message(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "data: {window: big}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.window: expected int, got str 'big'" in msg
    assert "x.yaml" in msg


def test_literal_choice_error_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "data: {labels: fulll}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.labels: expected one of 'full', 'eroded'" in msg
    assert "did you mean 'full'?" in msg


def test_bool_not_accepted_for_int(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "data: {batch_size: true}\n")
    with pytest.raises(ConfigError, match="data.batch_size: expected int, got bool True"):
        load_config(path)


def test_int_accepted_for_float(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "optim: {lr: 1}\ndata: {x_scale: 3}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert type(cfg.data.x_scale) is float


def test_optional_accepts_null_and_nested_list_items_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "data: {x: null, eval_stride: null}\n")
    cfg = load_config(path)
    assert cfg.data.x is None and cfg.data.eval_stride is None
    with pytest.raises(ConfigError, match=r"data.augment.scale\[1\]: expected float, got str"):
        load_config(path, ["data.augment.scale=[0.5, big]"])


def test_tile_ids_become_strings_including_underscored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yaml",
        "data:\n  train_tiles: [1, 3]\n  val_tiles: [2_10, 6_7]\n  test_tiles: ['11', 013]\n",
    )
    cfg = load_config(path)
    assert cfg.data.train_tiles == ["1", "3"]
    assert cfg.data.val_tiles == ["2_10", "6_7"]
    assert cfg.data.test_tiles == ["11", "013"]
    assert load_config(path, ["data.val_tiles=[2_11]"]).data.val_tiles == ["2_11"]


def test_trainer_unknown_key_suggests_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "trainer: {max_step: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'trainer.max_step'" in msg and "x.yaml" in msg
    assert "did you mean 'trainer.max_steps'?" in msg


def test_trainer_value_types_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "trainer: {accelerator: cpu, precision: 32}\n")
    cfg = load_config(path, ["trainer.max_steps=3"])
    assert cfg.trainer == {"accelerator": "cpu", "precision": 32, "max_steps": 3}
    with pytest.raises(ConfigError, match=r"trainer.max_steps: expected int, got str 'x'") as err:
        load_config(path, ["trainer.max_steps=x"])
    assert "override 'trainer.max_steps=x'" in str(err.value)
    with pytest.raises(ConfigError, match="trainer.enable_progress_bar: expected bool or null"):
        load_config(path, ["trainer.enable_progress_bar=3"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "data: {val_tiles: [2_10], root: '/d'}\n")
    path = write(
        tmp_path,
        "exp.yaml",
        """
        base: base.yaml
        data: {train_tiles: [1, 3], augment: {scale: [0.5, 2.0]}}
        model: {kwargs: {dropout: 0.1, tag: '1e3'}}
        optim: {lr: 1.0e-10}
        trainer: {max_steps: 5, precision: bf16-mixed}
        """,
    )
    cfg = load_config(path, ["data.eval_batch_size=2"])
    out = save_config(cfg, tmp_path / "out" / "exp.yaml")
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp.yaml"]  # no temp file left
    again = load_config(out)
    assert again == cfg
    assert isinstance(again, ExperimentConfig)
    assert again.model.kwargs["tag"] == "1e3"  # a number-like string stays a string
    assert config_to_dict(again)["name"] == "exp"


def test_empty_section_is_defaults_and_misplaced_key_points_to_section(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "trainer:\ndata:\n")
    cfg = load_config(path, ["trainer.max_steps=3"])
    assert cfg.trainer == {"max_steps": 3} and cfg.data == DataConfig()
    bad = write(tmp_path, "bad.yaml", "window: 512\n")
    with pytest.raises(ConfigError, match="unknown key 'window' in .*did you mean 'data.window'"):
        load_config(bad)


# --- model.kwargs are checked against the registered model's options ---------------------
def test_a_misspelled_recipe_option_names_the_closest(capsys: pytest.CaptureFixture) -> None:
    from rsfusion.cli.train import main

    assert (
        main(["--cfg", "demo_mobanet", "--set", "model.kwargs.promt_ratio=0.3", "--dry-run"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert (
        "model.kwargs.promt_ratio" in err[0]
        and "did you mean 'model.kwargs.prompt_ratio'" in err[0]
    )


def test_a_misspelled_option_value_is_refused_not_silently_off() -> None:
    with pytest.raises(ConfigError, match="did you mean 'adapter'") as err:
        load_config("demo_mobanet", ["model.kwargs.cpia=adaptr"])
    assert "one of 'prompt', 'adapter'" in str(err.value)
    with pytest.raises(ConfigError, match="expected float"):
        load_config("demo_ktb", ["model.kwargs.prompt_ratio=high"])
    from rsfusion.models.backbones.vit import ViTBackbone
    from rsfusion.models.mobanet import MoBaNet

    vit = ViTBackbone("vit_small_patch14_dinov2", depth=2, embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="'prompt' or 'adapter'"):
        MoBaNet(vit, 3, cpia="adaptr")  # the constructor refuses it too


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'mobanet'"):
        load_config("demo_mobanet", ["model.name=mobanett"])


def test_every_shipped_config_passes_the_option_check() -> None:
    from rsfusion.paths import configs_dir

    names = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    assert len(names) > 20
    for name in names:
        load_config(name)


# --- numbers are range-checked; files and overrides are plain data ------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-0.1", "optim.lr: must be a number > 0, got -0.1"),
        ("optim.lr=.nan", "optim.lr: must be a number > 0, got nan"),
        ("optim.lr=.inf", "optim.lr: must be a number > 0, got inf"),
        ("data.window=0", "data.window: must be a number >= 1, got 0"),
        ("data.batch_size=0", "data.batch_size: must be a number >= 1, got 0"),
        ("data.samples_per_epoch=-5", "data.samples_per_epoch: must be a number >= 1, got -5"),
        ("data.augment.hflip=1.5", "data.augment.hflip: must be a number in [0, 1], got 1.5"),
        ("data.augment.scale=[0.5, -2]", "data.augment.scale: must be a number > 0 (each item)"),
        ("model.masking.area=[0.1, 2]", "model.masking.area: must be a number in (0, 1]"),
        ("optim.momentum=1.0", "optim.momentum: must be a number in [0, 1), got 1.0"),
        ("seed=-1", "seed: must be a number in [0, 4294967295], got -1"),
        ("data.joint={a: {window: 0}}", "data.joint.a.window: must be a number >= 1, got 0"),
        ("trainer.gradient_clip_val=.nan", "trainer.gradient_clip_val: must be a finite number"),
    ],
)
def test_out_of_range_numbers_are_refused_with_key_range_and_source(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("demo_baseline", [override])
    assert message in str(err.value) and f"(in override '{override}')" in str(err.value)


def test_a_float_field_without_bounds_must_still_be_finite() -> None:
    import dataclasses

    from rsfusion.config_schema import build

    @dataclasses.dataclass
    class Section:  # a future section whose numbers have no BOUNDS entry yet
        gain: float = 1.0
        count: int = 0

    where = lambda p: "test.yaml"  # noqa: E731
    assert build(Section, {"gain": -2.5, "count": -3}, ("new",), where) == Section(-2.5, -3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"new.gain: must be a finite number, got (nan|inf)"):
            build(Section, {"gain": bad}, ("new",), where)


def test_every_bound_names_a_numeric_field() -> None:
    import dataclasses
    import typing

    from rsfusion.config_schema import BOUNDS

    for cls, bounds in BOUNDS.items():
        hints = typing.get_type_hints(cls)
        assert set(bounds) <= {f.name for f in dataclasses.fields(cls)}, cls.__name__
        for name in bounds:
            assert "int" in str(hints[name]) or "float" in str(hints[name]), (cls, name)


@pytest.mark.parametrize(
    "text",
    [
        "seed: !!python/object/apply:os.system ['touch {marker}']\n",
        "data: !!python/name:os.system\n",
        "seed: !custom 3\n",
    ],
)
def test_a_python_tag_in_a_config_is_refused_and_never_runs(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "MARKER"
    path = write(tmp_path, "evil.yaml", text.format(marker=marker))
    with pytest.raises(ConfigError, match="evil.yaml .*the YAML tag .* is not allowed") as err:
        load_config(path)
    assert "\n" not in str(err.value) and not marker.exists()
    with pytest.raises(ConfigError, match="override 'seed=!!python/name:os.system'"):
        load_config(write(tmp_path, "ok.yaml", "seed: 1\n"), ["seed=!!python/name:os.system"])


def test_invalid_yaml_is_one_line_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "data: [1, 2\nseed: 3\n")
    with pytest.raises(
        ConfigError, match=r"invalid YAML in config .*bad.yaml \(line 2, column 5\)"
    ):
        load_config(path)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_a_non_finite_model_option_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model.kwargs.prompt_ratio: must be a finite number"):
        load_config("demo_mobanet", ["model.kwargs.prompt_ratio=.nan"])
