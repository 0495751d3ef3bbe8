"""MA-CLIP (SegRGB-X Sec. III-B): the LoRA pool's per-sample selection, eq. 1, the file round
trip and CLIP loading, on a tiny random CLIP (no download)."""

from __future__ import annotations

import copy
import math
import time

import open_clip
import pytest
import torch
from torch import nn

from rsfusion.errors import ConfigError, MissingFileError, UnknownNameError, WeightsError
from rsfusion.models import clip_io
from rsfusion.models.maclip import (
    MACLIP,
    LoRAAttention,
    build_clip,
    load_clip,
    pool_key,
    save_clip,
    tiny_clip_config,
)
from tests.models.clip_fixtures import write_tiny_clip

RANK = 4


def make(pool=("depth", "thermal"), seed=0) -> tuple[MACLIP, nn.Module]:
    """An MA-CLIP and an untouched copy of its CLIP."""
    torch.manual_seed(seed)
    cfg = tiny_clip_config()
    clip = build_clip(cfg)
    reference = copy.deepcopy(clip).eval()
    return MACLIP(clip, cfg, list(pool), rank=RANK, alpha=4.0), reference


def nonzero_b(model: MACLIP, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_b." in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def test_pool_keys_of_card_modalities():
    assert [pool_key(m) for m in ("hha", "thermal_raw", "infrared", "events", "dolp")] == [
        "depth", "thermal", "thermal", "event", "polarization"]  # fmt: skip
    assert pool_key("disparity") == "light_field" and pool_key("ndsm") == "dsm"
    with pytest.raises(UnknownNameError, match="'sonar'.*known modalities"):
        pool_key("sonar")


def test_each_sample_uses_its_modalitys_lora_for_rgb_and_x():
    model, _ = make()
    nonzero_b(model)
    rgb = torch.rand(1, 3, 40, 48).repeat(2, 1, 1, 1)
    x = torch.rand(1, 1, 40, 48).repeat(2, 1, 1, 1)
    with torch.no_grad():
        s_r, s_m = model.encode(rgb, x, ["depth", "thermal"])
        alone_r, alone_m = model.encode(rgb[:1], x[:1], ["thermal"])
    assert (s_r[0] - s_r[1]).abs().max() > 1e-3 and (s_m[0] - s_m[1]).abs().max() > 1e-3
    torch.testing.assert_close(s_r[1:], alone_r, atol=1e-5, rtol=0)  # row 1: thermal's LoRA
    torch.testing.assert_close(s_m[1:], alone_m, atol=1e-5, rtol=0)
    torch.testing.assert_close(s_r.norm(dim=-1), torch.ones(2))


def test_zero_b_and_no_modality_give_plain_clip():
    model, reference = make()
    rgb, x = torch.rand(3, 3, 40, 48), torch.rand(3, 1, 40, 48)
    with torch.no_grad():
        expected_r = reference.encode_image(model.prepare(rgb), normalize=True)
        expected_m = reference.encode_image(model.prepare(x), normalize=True)
        s_r, s_m = model.encode(rgb, x, ["depth", "thermal", "depth"])
        torch.testing.assert_close(s_r, expected_r, atol=1e-5, rtol=0)
        torch.testing.assert_close(s_m, expected_m, atol=1e-5, rtol=0)
        nonzero_b(model)
        mixed_r, _ = model.encode(rgb, x, [None, "thermal", ""])  # None / "": no LoRA
    torch.testing.assert_close(mixed_r[[0, 2]], expected_r[[0, 2]], atol=1e-5, rtol=0)
    assert (mixed_r[1] - expected_r[1]).abs().max() > 1e-3


def test_split_attention_equals_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 2, batch_first=True).eval()
    tokens = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mha(tokens, tokens, tokens, need_weights=False)[0]
        out, _ = LoRAAttention(mha)(tokens, tokens, tokens, need_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_only_the_lora_pool_trains():
    model, _ = make(pool=("depth", "hha", "thermal"))  # hha shares depth's LoRA
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert model.modalities == ("depth", "thermal")
    assert all(".lora_a." in n or ".lora_b." in n for n in trainable)
    # 2 blocks x (q, v) x 2 adapters x (A: r x 32 + B: 32 x r)
    assert sum(trainable.values()) == 2 * 2 * 2 * (2 * RANK * 32)
    assert not model.clip.training and model.embed_dim == 32


def test_contrastive_loss_matches_a_hand_computation():
    model, _ = make()
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(2.0))
    s_t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s_r = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    s_m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def clip_loss(img, txt):  # CLIP's symmetric InfoNCE written out for 2 x 2
        z = [[2.0 * sum(a * b for a, b in zip(img[i], txt[j])) for j in range(2)] for i in range(2)]
        rows = [math.log(math.exp(z[i][0]) + math.exp(z[i][1])) - z[i][i] for i in range(2)]
        cols = [math.log(math.exp(z[0][j]) + math.exp(z[1][j])) - z[j][j] for j in range(2)]
        return (sum(rows) / 2 + sum(cols) / 2) / 2

    expected = (clip_loss(s_r.tolist(), s_t.tolist()) + clip_loss(s_m.tolist(), s_t.tolist())) / 2
    assert model.contrastive_loss(s_t, s_r, s_m).item() == pytest.approx(expected, abs=1e-6)


def test_training_the_pool_lowers_the_loss_and_leaves_clip_unchanged():
    model, reference = make(pool=("depth",))
    rgb, x = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        s_t = model.encode_text(["a red car", "a green tree", "a grey road", "a tall building"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.contrastive_loss(s_t, *model.encode(rgb, x, ["depth"] * 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    frozen = reference.state_dict()
    assert torch.equal(model.clip.token_embedding.weight, frozen["token_embedding.weight"])
    assert torch.equal(model.clip.visual.conv1.weight, frozen["visual.conv1.weight"])


def test_prepare_undoes_any_per_channel_affine_normalisation():
    model, _ = make()
    image = torch.rand(2, 3, 50, 30) * 255
    mean, std = torch.tensor([123.7, 116.3, 103.5]), torch.tensor([58.4, 57.1, 57.4])
    normalised = (image - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(model.prepare(normalised), model.prepare(image), atol=1e-4, rtol=0)
    assert model.prepare(image).shape == (2, 3, 64, 64)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        model.prepare(torch.rand(2, 2, 8, 8))


def test_unknown_or_missing_modality_is_an_unknown_name_error():
    model, _ = make(pool=("depth",))
    rgb, x = torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16)
    with pytest.raises(UnknownNameError, match="no LoRA for \\['thermal'\\].*\\['depth'\\]"):
        model.encode(rgb, x, ["thermal"])
    with pytest.raises(UnknownNameError, match="'sonar'"):
        model.encode(rgb, x, ["sonar"])


def test_save_load_round_trip_gives_identical_embeddings(tmp_path):
    model, _ = make()
    nonzero_b(model)
    rgb, x = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 40, 48)
    path = model.save(tmp_path / "run" / "maclip.pt", {"epochs": 3})
    assert not [p for p in path.parent.iterdir() if p.name != "maclip.pt"]  # no temp file left
    loaded = MACLIP.load(path)
    with torch.no_grad():
        before = model.eval().encode(rgb, x, ["depth", "thermal"])
        after = loaded.encode(rgb, x, ["depth", "thermal"])
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert loaded.modalities == ("depth", "thermal") and loaded.meta == {"epochs": 3}
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.load(path, weights_only=True)["format"] == "rsfusion-maclip"


def test_a_corrupt_or_wrong_file_is_a_weights_error(tmp_path):
    model, _ = make()
    path = model.save(tmp_path / "maclip.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(WeightsError, match="broken.pt cannot be read as an MA-CLIP file"):
        MACLIP.load(broken)
    clip_file = write_tiny_clip(tmp_path / "clip.pt")
    with pytest.raises(WeightsError, match="holds CLIP weights, not an MA-CLIP file"):
        MACLIP.load(clip_file)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["clip.visual.transformer.resblocks.0.attn.q.lora_a.depth"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="1 missing: clip.visual.*lora_a.depth"):
        MACLIP.load(tmp_path / "partial.pt")
    with pytest.raises(MissingFileError, match="pretrain_maclip"):
        MACLIP.load(tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="is an MA-CLIP file"):
        load_clip(path)


def test_load_clip_reads_a_local_tiny_clip(tmp_path):
    path = write_tiny_clip(tmp_path / "tiny.pt", seed=3)
    torch.manual_seed(3)
    original = build_clip(tiny_clip_config()).eval()
    clip, cfg = load_clip(path)
    assert cfg == tiny_clip_config() and not clip.training
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(clip.encode_image(image), original.encode_image(image))
    assert open_clip.get_model_preprocess_cfg(clip)["mean"] == open_clip.OPENAI_DATASET_MEAN
    plain = tmp_path / "plain.pth"  # a bare open_clip state dict: architecture given
    torch.save(original.state_dict(), plain)
    clip2, _ = load_clip(str(plain), model_cfg=tiny_clip_config())
    assert torch.equal(clip2.visual.conv1.weight, original.visual.conv1.weight)
    with pytest.raises(WeightsError, match="no architecture.*--clip-model"):
        load_clip(plain)
    wide = tiny_clip_config()
    wide["vision_cfg"]["width"] = 64
    with pytest.raises(WeightsError, match="does not fit the model .*of another shape"):
        load_clip(plain, model_cfg=wide)
    with pytest.raises(MissingFileError, match="not found"):
        load_clip(tmp_path / "missing.pt")
    assert save_clip(clip, cfg, tmp_path / "again.pt").is_file()


def test_a_hub_name_offline_fails_at_once_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError, match="ViT-B-32:openai' cannot be downloaded.*local file"):
        load_clip("ViT-B-32:openai")
    with pytest.raises(WeightsError, match="cannot be downloaded"):
        load_clip("openai", model_name="ViT-B-32")
    assert time.monotonic() - start < 10
    with pytest.raises(UnknownNameError, match="no pretrained 'nosuchtag'"):
        load_clip("ViT-B-32:nosuchtag")
    with pytest.raises(UnknownNameError, match="neither an existing file"):
        load_clip("nosuchmodel")


def test_a_failed_download_is_a_weights_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(clip_io, "_why_unreachable", lambda: "")
    monkeypatch.setattr(open_clip, "create_model", no_network)
    with pytest.raises(WeightsError, match="OSError: Name or service not known.*local file"):
        load_clip("ViT-B-32:openai")
