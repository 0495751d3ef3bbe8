"""RGB-only and early-fusion baselines, and encoder weight loading."""

import pytest
import torch

from rsfusion.errors import WeightsError
from rsfusion.models import ModelSpec, build_model
from rsfusion.models.base import count_parameters

SPEC = dict(num_classes=6, rgb_channels=3, x_channels=1, arch="Unet", backbone="resnet18")


def test_early_fusion_uses_x_and_rgb_only_ignores_it():
    torch.manual_seed(0)
    rgb, x = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    fusion = build_model(ModelSpec("early_fusion", **SPEC)).eval()
    rgb_only = build_model(ModelSpec("rgb_only", **SPEC)).eval()
    with torch.no_grad():
        assert not torch.allclose(fusion(rgb, x), fusion(rgb, x * 0))
        assert torch.equal(rgb_only(rgb, x), rgb_only(rgb, x * 0))
        assert fusion(rgb, x).shape == (1, 6, 64, 64)
    assert fusion.net.encoder.conv1.in_channels == 4


def test_unknown_model_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean 'early_fusion'"):
        build_model(ModelSpec("early_fuson", **SPEC))


def test_local_encoder_weights_load_and_widen_first_conv(tmp_path):
    donor = build_model(ModelSpec("rgb_only", **SPEC))
    path = tmp_path / "resnet18_encoder.pth"
    torch.save(donor.net.encoder.state_dict(), path)
    model = build_model(ModelSpec("early_fusion", **SPEC, weights=str(path)))
    enc, ref = model.net.encoder, donor.net.encoder
    assert torch.equal(enc.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    w = enc.conv1.weight
    assert torch.allclose(w[:, :3] * 4 / 3, ref.conv1.weight)  # RGB kept (rescaled)
    assert torch.allclose(w[:, 3] * 4 / 3, ref.conv1.weight.mean(1))  # X = mean of RGB


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="does not fit backbone 'resnet18'"):
        build_model(ModelSpec("rgb_only", **SPEC, weights=str(path)))


def test_unavailable_hub_weights_warn_or_fail_when_required():
    with pytest.warns(UserWarning, match="RANDOM INITIALISATION"):
        build_model(ModelSpec("rgb_only", **SPEC, weights="imagenet"))
    with pytest.raises(WeightsError, match="model.weights"):
        build_model(ModelSpec("rgb_only", **SPEC, weights="imagenet", weights_required=True))


def test_parameter_count_counts_shared_tensors_once():
    model = build_model(ModelSpec("rgb_only", **SPEC))
    total, trainable = count_parameters(model)
    model.net.encoder.requires_grad_(False)
    _, after = count_parameters(model)
    enc = sum(p.numel() for p in model.net.encoder.parameters())
    assert after == trainable - enc
    shared = torch.nn.ModuleList([model.net.encoder, model.net.encoder])
    assert count_parameters(shared)[0] == enc
