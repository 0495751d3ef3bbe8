"""Loading ViT weights from timm-layout and official DINOv2-layout files, offline hub names
(decided once per process, worded for the command)."""

from __future__ import annotations

import re
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from rsfusion.errors import WeightsError
from rsfusion.models.backbones import weights
from rsfusion.models.backbones.factory import build_backbone, building_for
from rsfusion.models.backbones.weights import (
    WeightsUnavailable,
    hub_session,
    hub_unreachable,
    load_vit_weights,
    weights_digest,
)
from rsfusion.models.base import ModelSpec

NAMES = {False: "vit_small_patch14_dinov2", True: "vit_small_patch14_reg4_dinov2"}


def tiny(registers: bool = False, **kwargs) -> VisionTransformer:
    """A 2-block, 48-wide DINOv2 ViT at 56 px (4x4 grid), every tensor random."""
    args = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 56, **kwargs}
    model = timm.create_model(NAMES[registers], pretrained=False, **args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def official(model: VisionTransformer, chunk: int = 0) -> dict[str, torch.Tensor]:
    """Name a timm DINOv2 model's tensors the way facebookresearch/dinov2 does.

    Official: one class position in pos_embed (also with registers, which it calls
    ``register_tokens``), a ``mask_token``, and with block chunking ``blocks.{chunk}.{i}``.
    """
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)", key)
        if m and chunk:
            key = f"blocks.{int(m[1]) // chunk}.{m[1]}.{m[2]}"
        out[key] = value
    if "reg_token" in out:  # timm folds the class position into cls_token; official does not
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = torch.randn(1, 1, model.embed_dim)
        out["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        out["cls_token"] = sd["cls_token"] - cls_pos
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    return out


def assert_same(a: VisionTransformer, b: VisionTransformer, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k not in skip:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout_round_trip(tmp_path: Path, registers: bool, suffix: str) -> None:
    src, dst = tiny(registers), tiny(registers)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    report = load_vit_weights(dst, path)
    assert_same(src, dst)
    assert report.loaded == len(src.state_dict())
    assert (report.missing, report.unexpected, report.resized) == ([], [], [])
    assert report.sha256 == weights_digest(dst) == weights_digest(src)
    assert report.sha256 != weights_digest(tiny(registers))


def test_official_layout_without_registers(tmp_path: Path) -> None:
    src, dst = tiny(), tiny()
    torch.save(official(src), tmp_path / "dinov2_vits14_pretrain.pth")
    report = load_vit_weights(dst, tmp_path / "dinov2_vits14_pretrain.pth")
    assert_same(src, dst)
    assert report.unexpected == ["mask_token"]
    assert report.sha256 == weights_digest(src)


def test_official_chunked_teacher_checkpoint_with_registers(tmp_path: Path) -> None:
    src, dst = tiny(True, depth=4), tiny(True, depth=4)
    sd = official(src, chunk=2)
    assert "blocks.0.1.attn.qkv.weight" in sd and "blocks.1.3.ls2.gamma" in sd
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, 48)
    torch.save({"teacher": teacher, "iteration": 12500}, tmp_path / "teacher_checkpoint.pth")

    report = load_vit_weights(dst, tmp_path / "teacher_checkpoint.pth")
    assert_same(src, dst, skip=("cls_token",))
    # Official class position is folded into timm's cls_token (no_embed_class layout).
    expected_cls = sd["cls_token"] + sd["pos_embed"][:, :1]
    assert torch.equal(dst.cls_token.detach(), expected_cls)
    assert torch.equal(dst.reg_token.detach(), sd["register_tokens"])
    assert set(report.unexpected) == {"backbone.mask_token", "dino_head.mlp.0.weight"}
    assert report.missing == [] and report.loaded == len(dst.state_dict())
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))


def test_pos_embed_resized_to_the_model_grid(tmp_path: Path) -> None:
    src = tiny()  # 4x4 grid, as official checkpoints are 37x37 for 518 px
    sd = official(src)
    torch.save({"model": sd}, tmp_path / "w.pth")
    dst = tiny(img_size=70)  # 5x5 grid
    report = load_vit_weights(dst, tmp_path / "w.pth")
    assert dst.pos_embed.shape == (1, 1 + 25, 48)
    assert report.resized == ["pos_embed: grid 4x4 -> 5x5 (bicubic, class position kept)"]
    pos = dst.pos_embed.detach()
    assert torch.equal(pos[:, 0], sd["pos_embed"][:, 0])
    # timm's own resampling (what timm.create_model(pretrained=True, img_size=70) would do).
    want = resample_abs_pos_embed(sd["pos_embed"], (5, 5), (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(pos, want)
    assert_same(src, dst, skip=("pos_embed",))


def test_pos_embed_resized_with_registers_timm_layout(tmp_path: Path) -> None:
    src, dst = tiny(True), tiny(True, img_size=42)  # 4x4 -> 3x3, no class position
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    report = load_vit_weights(dst, tmp_path / "w.pt")
    assert dst.pos_embed.shape == (1, 9, 48)
    assert report.resized == ["pos_embed: grid 4x4 -> 3x3 (bicubic, class position kept)"]
    assert_same(src, dst, skip=("pos_embed",))


def test_file_of_another_width_is_refused(tmp_path: Path) -> None:
    torch.save(tiny(embed_dim=64).state_dict(), tmp_path / "w.pth")
    for strict in (True, False):
        with pytest.raises(
            ValueError, match=r"file is ViT/14 \(embed 64.*asks for ViT/14 \(embed 48"
        ):
            load_vit_weights(tiny(), tmp_path / "w.pth", strict=strict)


def test_file_of_another_depth(tmp_path: Path) -> None:
    src = tiny(depth=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"depth 3.*asks for .*depth 2"):
        load_vit_weights(tiny(), tmp_path / "w.pth")
    dst = tiny()
    report = load_vit_weights(dst, tmp_path / "w.pth", strict=False)
    assert report.missing == [] and all(k.startswith("blocks.2.") for k in report.unexpected)
    assert torch.equal(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_register_count_mismatch_names_the_fix(tmp_path: Path) -> None:
    torch.save(official(tiny(True)), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"4 register tokens: use a \*_reg4_\* backbone"):
        load_vit_weights(tiny(False), tmp_path / "w.pth")


def test_missing_key(tmp_path: Path) -> None:
    src = tiny()
    sd = src.state_dict()
    del sd["norm.weight"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"1 model keys not in the file: norm\.weight"):
        load_vit_weights(tiny(), tmp_path / "w.pth")
    dst = tiny()
    before = dst.norm.weight.detach().clone()
    report = load_vit_weights(dst, tmp_path / "w.pth", strict=False)
    assert report.missing == ["norm.weight"] and report.loaded == len(sd)
    assert torch.equal(dst.norm.weight, before)
    assert torch.equal(dst.norm.bias, src.norm.bias)


@pytest.mark.parametrize(
    "name", ["vit_large_patch14_dinov2.lvd142m", "hf-hub:timm/vit_large_patch14_dinov2.lvd142m"]
)
def test_hub_name_offline_fails_quickly_with_the_fix(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        load_vit_weights(tiny(), name)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert name in message and "no file was found" in message
    assert "machine with internet" in message and "model.weights=/path/to/file.pth" in message


def test_hub_name_found_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    from timm.models._hub import save_for_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    src, dst = tiny(True), tiny(True, img_size=42)
    repo = tmp_path / "models--local--tiny-dinov2"
    revision = "0" * 40
    save_for_hf(src, repo / "snapshots" / revision, model_args={"depth": 2, "embed_dim": 48})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    report = load_vit_weights(dst, "hf-hub:local/tiny-dinov2")
    assert report.resized == ["pos_embed: grid 4x4 -> 3x3 (bicubic, class position kept)"]
    assert report.loaded == len(dst.state_dict()) and report.source == "hf-hub:local/tiny-dinov2"
    assert_same(src, dst, skip=("pos_embed",))


def test_missing_file_and_unknown_name_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "dinov2_vitl14_pretrain.pth"
    with pytest.raises(WeightsUnavailable, match=re.escape(str(missing))):
        load_vit_weights(tiny(), missing)
    with pytest.raises(WeightsUnavailable, match="not_a_model.*neither"):
        load_vit_weights(tiny(), "not_a_model")


# --- offline: decided once per process, fast, one message worded for the command -------------
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 56}
HUB_NAME = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture
def network_down(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """No offline flag, a fresh probe, and every connection (and name lookup) refused; the
    addresses tried are returned."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "_PROBES", {})
    tries: list[object] = []

    def refuse(address: object, *args: object, **kwargs: object) -> None:
        tries.append(address)
        raise OSError(101, "Network is unreachable")

    def no_names(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_names)
    return tries


class Connection:
    """What a faked socket.create_connection returns."""

    def close(self) -> None:
        pass


def _vit_spec(**kw: object) -> ModelSpec:
    return ModelSpec("mobanet", 4, 3, 1, backbone="vit_small_patch14_dinov2", weights=HUB_NAME,
                     kwargs={"backbone_kwargs": dict(TINY_VIT)}, **kw)  # fmt: skip


def _weights_warnings(build: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in seen if "BACKBONE WEIGHTS" in str(w.message)]


def test_a_hub_name_fails_over_at_once_with_one_message_when_the_network_is_down(
    network_down: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    start = time.perf_counter()
    with building_for("training"):
        messages = _weights_warnings(lambda: (build_backbone(_vit_spec()),
                                              build_backbone(_vit_spec())))  # fmt: skip
    assert time.perf_counter() - start < 2
    assert network_down == [("huggingface.co", 443)]  # one probe for the whole process
    assert len(messages) == 2  # one per backbone built
    assert messages[0].startswith("BACKBONE WEIGHTS NOT LOADED, TRAINING A RANDOMLY INITIALISED")
    assert "huggingface.co cannot be reached (Network is unreachable)" in messages[0]
    assert "model.weights=/path/to/file.pth" in messages[0]
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_a_cached_hub_file_loads_without_any_request_when_the_network_is_down(
    network_down: list[object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from timm.models._hub import save_for_hf

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    src, dst = tiny(True), tiny(True)
    repo = tmp_path / "models--local--tiny-dinov2"
    save_for_hf(src, repo / "snapshots" / ("0" * 40), model_args={"depth": 2, "embed_dim": 48})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    start = time.perf_counter()
    report = load_vit_weights(dst, "hf-hub:local/tiny-dinov2")  # retries would take > 20 s
    assert time.perf_counter() - start < 2 and len(network_down) == 1
    assert report.loaded == len(dst.state_dict())
    assert_same(src, dst)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # offline mode only inside


def test_a_probe_that_gets_no_answer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_offline", lambda: False)
    monkeypatch.setattr(weights, "_PROBES", {})
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(3) or Connection())
    start = time.perf_counter()
    why = hub_unreachable(timeout=0.3)
    assert time.perf_counter() - start < 1.5
    assert why == "huggingface.co did not answer within 0.3 s"
    assert hub_unreachable(timeout=0.3) == why  # kept: not probed again


def test_a_reachable_hub_is_probed_once_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[object] = []
    monkeypatch.setattr(weights, "_offline", lambda: False)
    monkeypatch.setattr(weights, "_PROBES", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda a, **k: tries.append(a) or Connection())
    assert hub_unreachable() == "" and hub_unreachable() == ""
    assert tries == [("proxy.example", 3128)]
    import huggingface_hub.constants

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    with hub_session() as why:  # reachable: huggingface_hub's mode is left alone
        assert why == "" and huggingface_hub.constants.HF_HUB_OFFLINE is before


def test_hf_hub_offline_decides_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed"))
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"
    before = huggingface_hub.constants.HF_HUB_OFFLINE
    with hub_session():
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert huggingface_hub.constants.HF_HUB_OFFLINE is before


def test_the_message_is_worded_for_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with building_for("checkpoint"):  # prediction, evaluation, export
        (text,) = _weights_warnings(lambda: build_backbone(_vit_spec()))
    assert "TRAINING" not in text and "training" not in text.split("trained without")[0]
    assert text.startswith(f"BACKBONE WEIGHTS NOT LOADED (pre-trained weights for '{HUB_NAME}'")
    assert "HF_HUB_OFFLINE is set, and nothing is cached)): the frozen backbone is rebuilt" in text
    assert ".)" not in text
    assert "must match the checkpoint's frozen-weights hash" in text
    assert "model.weights=" not in text  # not the user's to change at prediction
    (plain,) = _weights_warnings(lambda: build_backbone(_vit_spec()))
    assert "frozen backbone keeps its seeded random initialisation" in plain
    assert "TRAINING" not in plain
    trainable = _vit_spec(backbone_mode="trainable")
    with building_for("checkpoint"):  # its weights are in the checkpoint: nothing to say
        assert _weights_warnings(lambda: build_backbone(trainable)) == []
    with building_for("training"):
        (train,) = _weights_warnings(lambda: build_backbone(trainable))
    assert "TRAINING A RANDOMLY INITIALISED TRAINABLE BACKBONE" in train
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        build_backbone(_vit_spec(weights_required=True))
