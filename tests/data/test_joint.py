"""Generalist training data (SegRGB-X, arXiv 2603.28023): one datamodule over MFNet, DeLiVER
(fake releases) and the demo scene (ISPRS Vaihingen layout), masks in unified ids."""

from __future__ import annotations

import textwrap
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rsfusion.config import ConfigError, load_config
from rsfusion.data.demo import make_demo_scene
from rsfusion.data.factory import make_datamodule, model_card
from rsfusion.data.joint import JointCard, JointDataModule, joint_sources
from rsfusion.data.labelspace import UnifiedLabelSpace
from rsfusion.models.checkpoint import CheckpointMeta

DATA = Path(__file__).parent
CPU = torch.device("cpu")


def write_config(folder: Path, demo: Path, extra: str = "") -> Path:
    path = folder / "joint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            data:
              x: thermal
              batch_size: 2
              num_workers: 0
              augment: {{vflip: 0.0, hflip: 0.0}}
              joint:
                mfnet: {{card: mfnet, root: {DATA / "mfnet"}, x: thermal, x_encoding: unit3,
                         x_norm: scale, ratio: 3}}
                deliver: {{card: deliver, x: event, crop: [32, 32], augment: {{hflip: 0.5}}}}
                demo: {{card: vaihingen, root: {demo}, x: dsm, train_tiles: [1], val_tiles: [2],
                        window: 16, samples_per_epoch: 8, ratio: 0.5}}
            """
        )
        + extra
    )
    return path


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("joint")
    demo = make_demo_scene(folder / "demo", areas=(1, 2), size=40)
    return write_config(folder, demo)


def load(path: Path, *overrides: str):
    return load_config(path, [f"data.joint.deliver.root={DATA / 'deliver'}", *overrides])


@pytest.fixture(scope="module")
def dm(config_file: Path) -> JointDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = make_datamodule(load(config_file).data, seed=7)
        dm.setup("fit")
    return dm


def test_sources_inherit_the_data_section_with_their_overrides(config_file):
    cfg = load(config_file)
    sources = joint_sources(cfg.data, str(config_file))
    assert [(n, s.card, s.x, r) for n, s, r in sources] == [
        ("mfnet", "mfnet", "thermal", 3.0),
        ("deliver", "deliver", "event", 1.0),
        ("demo", "vaihingen", "dsm", 0.5),
    ]
    deliver = sources[1][1]
    assert deliver.root == str(DATA / "deliver")  # --set data.joint.deliver.root=...
    assert deliver.batch_size == 2 and deliver.crop == [32, 32] and deliver.joint is None
    assert (deliver.augment.hflip, deliver.augment.vflip) == (0.5, 0.0)  # deep-merged
    assert sources[0][1].augment.hflip == 0.0 and sources[2][1].window == 16


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.joint.deliver.windw=3", r"unknown key 'data\.joint\.deliver\.windw'.*"
         r"did you mean 'data\.joint\.deliver\.window'"),
        ("data.joint.mfnet.ratio=0", r"data\.joint\.mfnet\.ratio: must be a number > 0"),
        ("data.joint.mfnet.ratio=-1", r"data\.joint\.mfnet\.ratio: must be a number > 0"),
        ("data.joint.demo.window=big", r"data\.joint\.demo\.window: expected int, got str"),
        ("data.joint.demo.label_space=x.yaml", r"set 'data\.label_space' once"),
    ],
)  # fmt: skip
def test_config_errors_name_the_source_key(config_file, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(config_file, override)
    assert f"override '{override}'" in str(err.value)


def test_an_empty_joint_is_refused_with_its_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("data:\n  joint: {}\n")
    with pytest.raises(ConfigError, match=r"data\.joint: needs at least one source") as err:
        load_config(path)
    assert "empty.yaml" in str(err.value)


def test_cards_outside_the_label_space_and_bad_channels_are_refused(config_file, tmp_path):
    cfg = load(config_file, "data.joint.demo.card=autzen").data
    with pytest.raises(ConfigError, match=r"data\.joint\.demo\.card: dataset 'autzen' is not in "
                       r"the label space.*add datasets\.autzen"):  # fmt: skip
        joint_sources(cfg, "joint.yaml")
    small = tmp_path / "space.yaml"
    small.write_text(
        "classes: [{id: 0, name: road}]\n"
        "datasets: {x: {classes: [{id: 0, name: road, unified: road}]}}\n"
    )
    cfg = load(config_file, f"data.label_space={small}").data
    with pytest.raises(ConfigError, match=r"data\.joint\.mfnet\.card: dataset 'mfnet' is not"):
        joint_sources(cfg)
    cfg = load(config_file, "data.joint.demo.card=potsdam", "data.joint.demo.x=rgbir").data
    with pytest.raises(ConfigError, match=r"data\.joint\.demo\.x: 'rgbir' of 'potsdam' gives 4"):
        joint_sources(cfg)
    cfg = load(config_file, "data.joint.demo.card=potsdam", "data.joint.demo.rgb=rgbir").data
    with pytest.raises(ConfigError, match=r"data\.joint\.demo\.rgb: 'rgbir' .* has 4 channels"):
        joint_sources(cfg)


def test_factory_and_model_card(dm, config_file):
    cfg = load(config_file)
    assert isinstance(dm, JointDataModule) and dm.sources == ["mfnet", "deliver", "demo"]
    card = model_card(cfg.data)
    assert isinstance(card, JointCard) and card.name == "joint"
    space = UnifiedLabelSpace.load()
    assert card.num_classes == dm.num_classes == space.num_classes
    assert card.class_names == dm.class_names == space.classes and card.ignore_index == 255
    for name in ("rgb", "thermal", "event", "dsm"):  # every source's modalities: 3 channels
        assert len(card.modality(name).bands) == 3
    # metric classes: the sources' own metric classes in unified ids (vaihingen clutter is not
    # scored, but MFNet scores its unlabelled = background)
    assert space.classes.index("impervious_surface") in card.metric_classes
    assert space.classes.index("background") in card.metric_classes
    assert space.classes.index("wall") in card.metric_classes  # DeLiVER Wall
    assert space.classes.index("bed") not in card.metric_classes  # no indoor source


def test_ratio_3_to_1_draws_three_quarters(config_file):
    cfg = load(config_file).data
    cfg = replace(cfg, joint={k: v for k, v in cfg.joint.items() if k != "demo"})
    two = JointDataModule(cfg, seed=3)  # no setup: drawing needs no data
    assert two.ratios == [3.0, 1.0]
    counts = Counter(two.source_sequence(epoch=0, length=8000))
    assert counts[0] / 8000 == pytest.approx(0.75, abs=0.02) and set(counts) == {0, 1}


def test_the_draw_depends_on_seed_and_epoch_only(config_file, dm):
    again = JointDataModule(load(config_file).data, seed=7)
    assert again.source_sequence(2, 200) == dm.source_sequence(2, 200)
    assert dm.source_sequence(3, 200) != dm.source_sequence(2, 200)
    other = JointDataModule(load(config_file).data, seed=8)
    assert other.source_sequence(2, 200) != dm.source_sequence(2, 200)
    counts = Counter(dm.source_sequence(0, 9000))
    assert [counts[i] / 9000 for i in range(3)] == pytest.approx([3 / 4.5, 1 / 4.5, 0.5 / 4.5],
                                                                 abs=0.02)  # fmt: skip


def step(dm: JointDataModule, batch: dict, idx: int = 0) -> dict:
    return dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, CPU, idx), idx)


def test_each_training_batch_comes_from_one_drawn_source(dm):
    loader = dm.train_dataloader()
    own = [len(sub.train_dataloader()) for sub in dm.subs]
    assert own == [1, 1, 4] and len(loader) == sum(own)  # 2/2 samples, 8 windows, batch 2
    dm.trainer = SimpleNamespace(current_epoch=1, global_rank=0, training=True)
    try:
        batches = [step(dm, b) for b in loader]
    finally:
        dm.trainer = None
    assert [dm.sources.index(b["source"][0]) for b in batches] == dm.source_sequence(1)
    for b in batches:
        i = dm.sources.index(b["source"][0])
        assert b["source"] == [dm.sources[i]] * 2 and b["dataset"] == [dm.cards[i]] * 2
        assert b["modality"] == [dm.source_cfgs[i].x] * 2
        assert b["image"].shape[:2] == b["image_x"].shape[:2] == (2, 3)  # DSM repeated to 3
        assert abs(float(b["image"].mean())) < 3  # the source's own ImageNet normalisation
        seen = {dm.label_space.classes[u] for u in b["mask"].unique().tolist() if u != 255}
        assert seen and seen <= set(dm.label_space.unified_names(dm.cards[i]))


def test_masks_become_unified_ids(dm):
    space = dm.label_space
    for i, (own_id, unified) in enumerate([(1, "car"), (9, "car"), (0, "impervious_surface")]):
        raw = next(iter(dm.subs[i].val_dataloader()))
        own = raw["mask"].clone()
        out = step(dm, raw, i)
        assert out["source"][0] == dm.sources[i]
        assert torch.equal(out["mask"], space.remap(own, dm.cards[i], to="unified"))
        hit = own == own_id
        assert hit.any() and (out["mask"][hit] == space.classes.index(unified)).all()
        assert (out["mask"][own == 255] == 255).all()
    assert space.classes.index("impervious_surface") == 89


def test_isprs_batches_get_dataset_and_modality(dm):
    batch = {"image": torch.zeros(2, 3, 4, 4), "image_x": torch.ones(2, 1, 4, 4),
             "mask": torch.tensor([[[4]], [[255]]])}  # fmt: skip
    out = dm.to_unified(batch, 2)
    assert out["dataset"] == ["vaihingen"] * 2 and out["modality"] == ["dsm"] * 2
    assert out["source"] == ["demo"] * 2 and out["image_x"].shape == (2, 3, 4, 4)
    assert out["mask"].flatten().tolist() == [62, 255]


def test_validation_has_one_loader_per_source_in_order(dm):
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    for j, loader in enumerate(loaders):
        batch = step(dm, next(iter(loader)), j)
        assert batch["source"][0] == dm.sources[j] and batch["dataset"][0] == dm.cards[j]


def test_describe_holds_sources_unified_classes_and_the_label_space(dm):
    meta = dm.describe()
    space = dm.label_space
    assert list(meta["joint"]) == ["mfnet", "deliver", "demo"]
    assert [meta["joint"][s]["ratio"] for s in dm.sources] == [3.0, 1.0, 0.5]
    assert meta["joint"]["demo"]["card"] == "vaihingen" and meta["joint"]["demo"]["window"] == 16
    assert meta["joint"]["deliver"]["x_modality"] == "event"
    assert meta["classes"] == space.classes and meta["ignore_index"] == 255
    assert len(meta["palette"]) == space.num_classes
    assert meta["palette"][space.classes.index("car")] == [64, 0, 128]  # MFNet's car colour
    # the first source's preprocessing at the top level: what prediction reads
    assert meta["card"] == "mfnet" and meta["x_modality"] == "thermal" and meta["kind"] == "natural"
    assert meta["x_bands"] == ["thermal"] * 3 and "ratio" not in meta
    spec = {"name": "segrgbx", "num_classes": space.num_classes, "rgb_channels": 3,
            "x_channels": 3}  # fmt: skip
    CheckpointMeta.from_dict({**meta, "model": spec})  # every required key present
    rebuilt = UnifiedLabelSpace.from_dict(meta["label_space"])
    assert rebuilt.classes == space.classes
    for name in space.datasets:
        assert torch.equal(rebuilt.to_unified(name), space.to_unified(name))
