"""Loading SegFormer MiT weights into :class:`MiTBackbone`: the official NVlabs ImageNet layout,
SegFormer (mmseg) segmentation checkpoints, smp's encoder state dicts and hub names (offline:
:class:`WeightsUnavailable`, the download mocked), other variants refused, and the factory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import get_encoder, mix_transformer
from torch import Tensor

from rsfusion.errors import WeightsError, WeightsUnavailable
from rsfusion.models.backbones import mit_weights
from rsfusion.models.backbones.factory import build_backbone
from rsfusion.models.backbones.mit import MiTBackbone, mit_settings
from rsfusion.models.backbones.mit_weights import load_mit_weights, mit_hub_repo
from rsfusion.models.base import ModelSpec

#: NVlabs SegFormer's names inside one block (mmseg/models/backbones/mix_transformer.py).
_BLOCK_PARTS = ("norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1",
                "mlp.dwconv.dwconv", "mlp.fc2")  # fmt: skip


@pytest.fixture(autouse=True)
def _fast_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """smp initialises each linear three times with timm's (slow) truncated normal; the tests
    overwrite every tensor anyway, so a plain normal does."""
    monkeypatch.setattr(
        mix_transformer, "trunc_normal_", lambda t, std=1.0, **_: torch.nn.init.normal_(t, 0, std)
    )


def official_keys(variant: str) -> list[str]:
    """The keys of NVlabs' ImageNet ``mit_bN.pth`` (classifier included), written out."""
    settings = mit_settings(variant)
    keys = []
    for i, (depth, sr) in enumerate(zip(settings["depths"], settings["sr_ratios"]), start=1):
        parts = [f"patch_embed{i}.proj", f"patch_embed{i}.norm"]
        for j in range(depth):
            extra = ("attn.sr", "attn.norm") if sr > 1 else ()
            parts += [f"block{i}.{j}.{p}" for p in (*_BLOCK_PARTS, *extra)]
        parts.append(f"norm{i}")
        keys += [f"{p}.{t}" for p in parts for t in ("weight", "bias")]
    return keys + ["head.weight", "head.bias"]


def random_mit(variant: str = "mit_b0", seed: int = 0) -> MiTBackbone:
    """A MiT with every tensor random (norms and biases included)."""
    torch.manual_seed(seed)
    backbone = MiTBackbone(variant)
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_(0, 0.3)
    return backbone


def official_state(backbone: MiTBackbone) -> dict[str, Tensor]:
    """``backbone`` as NVlabs' ImageNet file: official names plus a 1000-class ``head``."""
    sd = backbone.mit.state_dict()
    keys = official_keys(backbone.name)
    assert set(keys) - {"head.weight", "head.bias"} == set(sd)  # smp keeps SegFormer's names
    dim = sd["norm4.weight"].shape[0]
    head = {"head.weight": torch.randn(1000, dim), "head.bias": torch.randn(1000)}
    return {k: sd[k].clone() if k in sd else head[k] for k in keys}


def assert_same(a: MiTBackbone, b: MiTBackbone) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("wrapped", [True, False])
def test_official_imagenet_file_loads_back_exactly(wrapped: bool, tmp_path: Path) -> None:
    src = random_mit(seed=1)
    state = official_state(src)
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    dst = random_mit(seed=2)
    report = load_mit_weights(dst, path)
    assert_same(dst, src)
    assert report.loaded == len(src.mit.state_dict()) and report.missing == []
    assert report.unexpected == ["head.weight", "head.bias"]
    assert report.source == str(path) and len(report.sha256) == 64
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(dst.mit(image), src.mit(image)):
            assert torch.equal(a, b)


def test_segformer_segmentation_checkpoint(tmp_path: Path) -> None:
    src = random_mit(seed=1)
    weights = {f"backbone.{k}": v for k, v in official_state(src).items() if "head" not in k}
    weights["decode_head.linear_c4.proj.weight"] = torch.randn(256, 256)
    weights["decode_head.linear_pred.weight"] = torch.randn(6, 256, 1, 1)
    path = tmp_path / "segformer.b0.512x512.ade.160k.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": weights}, path)
    dst = random_mit(seed=2)
    report = load_mit_weights(dst, path)
    assert_same(dst, src)
    assert report.unexpected == [
        "decode_head.linear_c4.proj.weight",
        "decode_head.linear_pred.weight",
    ]


def test_smp_encoder_state_dicts(tmp_path: Path) -> None:
    torch.manual_seed(3)
    encoder = get_encoder("mit_b0", weights=None)
    path = tmp_path / "smp_mit_b0.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    dst = random_mit(seed=2)
    report = load_mit_weights(dst, path)
    assert report.missing == [] and report.unexpected == []
    for k, v in encoder.state_dict().items():
        assert torch.equal(dst.mit.state_dict()[k], v), k
    own = tmp_path / "mit_backbone.pth"  # a MiTBackbone's own state dict: "mit." prefix
    torch.save(random_mit(seed=4).state_dict(), own)
    load_mit_weights(dst, own)
    assert_same(dst, random_mit(seed=4))


def test_other_variants_and_layouts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mit_b1.pth"
    torch.save(official_state(MiTBackbone("mit_b1")), path)
    both = r"mit_b1 \(embed dims \(64, 128, 320, 512\).*the model is mit_b0 \(embed dims \(32,"
    for strict in (True, False):
        with pytest.raises(ValueError, match=both):
            load_mit_weights(MiTBackbone("mit_b0"), path, strict=strict)
    state = official_state(random_mit(seed=1))
    del state["norm4.weight"], state["norm4.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"2 model keys not in the file: norm4.weight"):
        load_mit_weights(MiTBackbone("mit_b0"), path)
    report = load_mit_weights(MiTBackbone("mit_b0"), path, strict=False)
    assert report.missing == ["norm4.weight", "norm4.bias"]
    torch.save({"state_dict": {"backbone.layers.0.0.projection.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="mmseg 1.x"):
        load_mit_weights(MiTBackbone("mit_b0"), path)


def test_hub_names_fail_fast_offline_and_load_when_fetched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_network(*args: object) -> str:
        raise AssertionError(f"the network was touched: {args}")

    monkeypatch.setattr(mit_weights, "_cached", lambda *args: None)
    monkeypatch.setattr(mit_weights, "_download", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MiTBackbone("mit_b0")
    start = time.monotonic()
    for name in ("mit_b0", "mit_b0.imagenet", "smp-hub/mit_b0.imagenet"):
        with pytest.raises(WeightsUnavailable, match=r"download https://huggingface.co/smp-hub/"):
            load_mit_weights(model, name)
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_mit_weights(model, tmp_path / "missing.pth")
    with pytest.raises(WeightsUnavailable, match="neither an existing weights file"):
        load_mit_weights(model, "mit_b9")
    assert time.monotonic() - start < 5

    monkeypatch.setattr(mit_weights, "_offline", lambda: False)
    monkeypatch.setattr(mit_weights, "_download", lambda *a: (_ for _ in ()).throw(OSError("down")))
    with pytest.raises(WeightsUnavailable, match=r"\(OSError: down\).*pass the file's path"):
        load_mit_weights(model, "mit_b0")

    src = random_mit(seed=1)
    served = tmp_path / "model.safetensors"  # smp's hub file: the encoder state dict
    save_file({k: v.contiguous() for k, v in src.mit.state_dict().items()}, str(served))
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(mit_weights, "_download", lambda *a: asked.append(a) or str(served))
    report = load_mit_weights(model, "hf-hub:smp-hub/mit_b0.imagenet")
    assert_same(model, src)
    assert report.source == "hf-hub:smp-hub/mit_b0.imagenet"
    assert asked == [(*mit_hub_repo("mit_b0")[:1], "model.safetensors", mit_hub_repo("mit_b0")[1])]
    assert mit_hub_repo("mit_b0")[0] == "smp-hub/mit_b0.imagenet"


def test_factory_loads_files_and_warns_on_hub_names_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = random_mit(seed=1)
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": official_state(src)}, path)
    spec = ModelSpec("segrgbx", 4, 3, 1, backbone="mit_b0", weights=str(path))
    backbone = build_backbone(spec)
    assert isinstance(backbone, MiTBackbone)
    assert_same(backbone, src)
    monkeypatch.setattr(mit_weights, "_cached", lambda *args: None)
    monkeypatch.setattr(mit_weights, "_download", lambda *a: pytest.fail("network touched"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = dataclasses.replace(spec, weights="smp-hub/mit_b0.imagenet")
    with pytest.warns(UserWarning, match="BACKBONE WEIGHTS NOT LOADED"):
        build_backbone(hub)
    with pytest.raises(WeightsError, match="smp-hub/mit_b0.imagenet"):
        build_backbone(dataclasses.replace(hub, weights_required=True))
