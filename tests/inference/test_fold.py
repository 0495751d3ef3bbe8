"""BatchNorm folding and activation fusion: same outputs, only pairs the forward pass confirmed."""

import segmentation_models_pytorch as smp
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from rsfusion.inference.fold import ConvAct, fold_batchnorm
from rsfusion.inference.runner import ModelRunner


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, eval mode."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_sequential_and_timm_norm_act_pairs_fold_to_the_same_output():
    model = _randomise(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 4, 1, bias=False), BatchNormAct2d(4, act_layer=nn.ReLU6),
        )
    )  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    out, folded = fold_batchnorm(model, lambda: model(x))
    assert folded == 2 and torch.equal(out, expected)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(model[4][1], nn.ReLU6)  # the activation of BatchNormAct2d stays


class TwoStreams(nn.Module):
    """One convolution shared by two streams, each with its own norm (left alone), and a norm
    registered after a convolution it does not read (left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn_rgb = nn.BatchNorm2d(4)
        self.bn_x = nn.BatchNorm2d(4)
        self.other = nn.Conv2d(4, 4, 1)
        self.bn_after_relu = nn.BatchNorm2d(4)

    def forward(self, a, b):
        y = self.bn_rgb(self.conv(a)) + self.bn_x(self.conv(b))
        return self.bn_after_relu(torch.relu(self.other(y)))


def test_pairs_the_forward_pass_does_not_confirm_are_left_alone():
    model = _randomise(TwoStreams())
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    expected = model(a, b)
    _, folded = fold_batchnorm(model, lambda: model(a, b))
    assert folded == 0
    assert isinstance(model.bn_rgb, nn.BatchNorm2d)
    assert isinstance(model.bn_after_relu, nn.BatchNorm2d)
    assert torch.equal(model(a, b), expected)


def test_runner_folds_a_unet_after_its_first_batch_with_equal_logits():
    torch.manual_seed(0)
    unet = _randomise(smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3))
    reference = _randomise(smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3))
    reference.load_state_dict(unet.state_dict())

    class Pair(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, rgb, x=None):
            return self.net(rgb)

    runner = ModelRunner(Pair(unet), device="cpu", precision="fp32")
    rgb = torch.randn(2, 3, 64, 64).numpy()
    first, second = runner(rgb), runner(rgb)
    with torch.no_grad():
        expected = reference(torch.from_numpy(rgb)).numpy()
    assert runner.folded >= 20  # encoder and decoder convolutions with their norms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in unet.modules())
    assert sum(isinstance(m, ConvAct) for m in unet.modules()) >= 10  # conv + ReLU, one pass
    assert (first == expected).all()  # the first batch runs before folding
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    off = ModelRunner(Pair(reference), device="cpu", precision="fp32", fold_bn=False)
    off(rgb)
    assert off.folded == 0 and any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())


def test_activations_fuse_into_the_convolutions_on_cpu_with_the_same_values():
    torch.manual_seed(1)
    model = _randomise(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), BatchNormAct2d(8),  # ReLU
            nn.Conv2d(8, 4, 1, bias=False), BatchNormAct2d(4, apply_act=False),  # no activation
            nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Sigmoid(),  # not fusable: stays apart
        )
    ).to(memory_format=torch.channels_last)  # fmt: skip
    x = (4 * torch.randn(2, 3, 16, 16)).contiguous(memory_format=torch.channels_last)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_bf16 = model(x)
    _, folded = fold_batchnorm(model, lambda: model(x), fuse_act=True)
    fused = [m for m in model.modules() if isinstance(m, ConvAct)]
    assert folded == 4 and len(fused) == 2
    assert isinstance(model[2], nn.Identity) and isinstance(model[4], nn.Identity)
    assert isinstance(model[9], nn.Sigmoid) and isinstance(model[7], nn.Conv2d)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x)
        assert out_bf16.dtype == expected_bf16.dtype == torch.bfloat16
        # fused and unfused bf16 differ by roundings only (folding moves one)
        torch.testing.assert_close(out_bf16.float(), expected_bf16.float(), rtol=0.05, atol=0.02)
    # the ReLU6 clamps at 6 inside the convolution: large inputs saturate
    big = model[0](100 * x)
    assert big.max().item() == 6.0 and big.min().item() == 0.0
