"""Unified label space (SegRGB-X, eq. 8): one-to-one per dataset, remap both ways."""

from __future__ import annotations

import pytest
import torch

from rsfusion.data.labelspace import UnifiedLabelSpace, default_path
from rsfusion.yamlio import load_yaml

# own class count and (first, last) class in official order
EXPECTED = {
    "nyudepthv2": (40, "wall", "other_prop"),
    "sunrgbd": (37, "wall", "bag"),
    "mfnet": (9, "unlabelled", "bump"),
    "fmb": (15, "unlabelled", "pole"),
    "pst900": (5, "background", "survivor"),
    "deliver": (25, "Building", "Truck"),
    "mcubes": (20, "asphalt", "sky"),
    "zju_rgbp": (8, "building", "bicycle"),
    "urbanlf": (14, "bike", "sky"),
    "ddd17": (6, "flat", "vehicle"),
    "vaihingen": (6, "impervious_surfaces", "clutter"),
    "potsdam": (6, "impervious_surfaces", "clutter"),
}


@pytest.fixture(scope="module")
def space() -> UnifiedLabelSpace:
    return UnifiedLabelSpace.load()


def test_unified_ids_contiguous_and_names_unique(space):
    raw = load_yaml(default_path().read_text())
    assert [c["id"] for c in raw["classes"]] == list(range(len(raw["classes"])))
    assert len(set(space.classes)) == space.num_classes == len(raw["classes"])
    assert space.ignore_index == 255 > space.num_classes
    for name, spec in raw["datasets"].items():
        assert [c["id"] for c in spec["classes"]] == list(range(len(spec["classes"]))), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_classes_in_official_order(space, name):
    n, first, last = EXPECTED[name]
    own = space.dataset_classes(name)
    assert (len(own), own[0], own[-1]) == (n, first, last)
    assert len(set(own)) == n


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mapping_is_a_bijection_onto_its_image(space, name):
    n = len(space.dataset_classes(name))
    to_u, from_u = space.to_unified(name), space.from_unified(name)
    image = to_u[:n]
    assert len(set(image.tolist())) == n  # no two own classes collapse
    assert ((image >= 0) & (image < space.num_classes)).all()
    assert torch.equal(from_u[image], torch.arange(n))  # own -> unified -> own is the identity
    others = torch.ones(space.num_classes, dtype=torch.bool)
    others[image] = False
    assert (from_u[: space.num_classes][others] == space.ignore_index).all()
    assert to_u[space.ignore_index] == from_u[space.ignore_index] == space.ignore_index
    own = torch.tensor([*range(n), space.ignore_index])
    unified = space.remap(own, name, to="unified")
    assert unified[-1] == space.ignore_index
    assert torch.equal(space.remap(unified, name), own)


def test_every_unified_class_comes_from_some_dataset(space):
    used = {u for name in space.datasets for u in space.unified_names(name)}
    assert used == set(space.classes)


def test_notable_merges(space):
    def sources(unified: str) -> set[str]:
        return {
            f"{name}:{own}"
            for name in space.datasets
            for own, u in zip(space.dataset_classes(name), space.unified_names(name))
            if u == unified
        }

    assert {"mfnet:car", "deliver:Cars", "ddd17:vehicle", "zju_rgbp:car"} <= sources("car")
    assert {"nyudepthv2:person", "deliver:Pedestrian", "urbanlf:person"} <= sources("person")
    assert {"mfnet:guardrail", "deliver:GroundRail"} == sources("guard_rail")
    assert {"nyudepthv2:wall", "sunrgbd:wall", "deliver:Wall"} == sources("wall")
    assert sources("refrigerator") == {"nyudepthv2:refrigerator", "sunrgbd:fridge"}
    assert sources("rider") == {"urbanlf:rider"}  # urbanlf keeps person and rider apart


def test_isprs_cards_join_the_natural_classes(space):
    """The aerial classes reuse the street-scene ones where the meaning matches; impervious
    surfaces (roads, sidewalks, car parks) get the one class added after the natural ones."""
    for name in ("vaihingen", "potsdam"):
        assert space.unified_names(name) == [
            "impervious_surface", "building", "terrain", "vegetation", "car", "background"
        ]  # fmt: skip
    assert space.classes.index("impervious_surface") == 89 == space.num_classes - 1
    ids = space.remap(torch.arange(6), "vaihingen", to="unified").tolist()
    assert ids == [89, 45, 53, 52, 62, 40]
    assert space.classes[45] == "building" and space.classes[62] == "car"  # ids kept
    # a potsdam car and a DeLiVER car are one unified class; back to each own id
    car = space.remap(torch.tensor([4]), "potsdam", to="unified")
    assert space.remap(car, "deliver").tolist() == [9]
    assert space.remap(torch.tensor([89]), "deliver").tolist() == [255]  # deliver lacks it


def test_remap_matches_the_table_on_a_random_map(space):
    g = torch.Generator().manual_seed(0)
    n = len(space.dataset_classes("deliver"))
    own = torch.randint(0, n, (2, 7, 9), generator=g, dtype=torch.uint8)
    own[0, 0, :3] = space.ignore_index
    unified = space.remap(own, "deliver", to="unified")
    names = space.unified_names("deliver")
    for o, u in zip(own.flatten().tolist(), unified.flatten().tolist()):
        expected = space.ignore_index if o == space.ignore_index else space.classes.index(names[o])
        assert u == expected
    assert unified.shape == own.shape and unified.dtype == torch.long
    # a unified map from another dataset: classes deliver lacks become ignore
    mfnet_unified = space.remap(torch.arange(9), "mfnet", to="unified")
    back = space.remap(mfnet_unified, "deliver")
    has = [u in names for u in space.unified_names("mfnet")]
    assert [b != space.ignore_index for b in back.tolist()] == has


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_remap_on_gpu(space):
    own = torch.arange(9, device="cuda")
    unified = space.remap(own, "mfnet", to="unified")
    assert unified.device.type == "cuda" and torch.equal(space.remap(unified, "mfnet"), own)


def test_select_logits_follows_own_order(space):
    logits = torch.randn(2, space.num_classes, 4, 5)
    own = space.select_logits(logits, "urbanlf")
    assert own.shape == (2, 14, 4, 5)
    idx = space.to_unified("urbanlf")[:14]
    assert torch.equal(own, logits[:, idx])
    with pytest.raises(ValueError, match="channels"):
        space.select_logits(logits[:, :10], "urbanlf")


def test_errors_name_the_problem(space):
    with pytest.raises(KeyError, match="did you mean 'mfnet'"):
        space.to_unified("mfnett")
    with pytest.raises(ValueError, match=r"\[9, 200\]"):
        space.remap(torch.tensor([0, 9, 200, 255]), "mfnet", to="unified")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        space.remap(torch.tensor([-1, 3]), "mfnet")
    beyond = space.num_classes  # the first id past the unified classes
    with pytest.raises(ValueError, match=rf"\[{beyond}\]"):
        space.remap(torch.tensor([beyond]), "mfnet")
    with pytest.raises(TypeError, match="integer"):
        space.remap(torch.zeros(3), "mfnet")


def _raw(datasets):
    classes = [{"id": i, "name": n} for i, n in enumerate(["road", "car", "sky"])]
    return {"ignore_index": 255, "classes": classes, "datasets": datasets}


def _ds(*pairs):
    return {"classes": [{"id": i, "name": o, "unified": u} for i, (o, u) in enumerate(pairs)]}


def test_invalid_spaces_are_refused():
    with pytest.raises(ValueError, match="one-to-one"):
        UnifiedLabelSpace.from_dict(_raw({"x": _ds(("car", "car"), ("van", "car"))}))
    with pytest.raises(ValueError, match="unknown unified"):
        UnifiedLabelSpace.from_dict(_raw({"x": _ds(("bus", "bus"))}))
    raw = _raw({"x": _ds(("car", "car"))})
    raw["classes"][2]["id"] = 5
    with pytest.raises(ValueError, match="contiguous"):
        UnifiedLabelSpace.from_dict(raw)
    with pytest.raises(ValueError, match="duplicate"):
        UnifiedLabelSpace(["car", "car"], {})
    ok = UnifiedLabelSpace.from_dict(_raw({"x": _ds(("sky", "sky"), ("auto", "car"))}))
    assert ok.remap(torch.tensor([0, 1, 255]), "x", to="unified").tolist() == [2, 1, 255]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_agrees_with_the_dataset_card(space, name):
    card = default_path().parent.parent / f"{name}.yaml"
    if not card.exists():
        pytest.skip(f"no dataset card {card.name} yet")
    classes = load_yaml(card.read_text())["classes"]
    names = [c["name"] if isinstance(c, dict) else c for c in classes]
    assert names == space.dataset_classes(name)
