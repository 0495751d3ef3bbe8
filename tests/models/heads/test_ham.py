"""LightHamHead / Hamburger / NMF2D: CPAL-T's decoder (CPAL, TCSVT 2025)."""

import pytest
import torch
from torch import nn

from rsfusion.models.heads.ham import NMF2D, Hamburger, LightHamHead

CHANNELS = [8, 16, 32, 64]
PYRAMID = [(16, 20), (8, 10), (4, 5), (2, 3)]


def _features(sizes=PYRAMID, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, sizes)]


def _head(**kw) -> LightHamHead:
    base = {"channels": 32, "ham_channels": 32, "num_classes": 3, "num_groups": 8, "md_r": 8}
    return LightHamHead(CHANNELS, **{**base, **kw})


def _low_rank(seed=0, d=16, n=60, rank=4):
    g = torch.Generator().manual_seed(seed)
    bases, coef = torch.rand(1, d, rank, generator=g), torch.rand(1, n, rank, generator=g)
    return (bases @ coef.transpose(1, 2)).reshape(1, d, 6, n // 6)


@pytest.mark.parametrize(
    "sizes", [PYRAMID, [(15, 21), (8, 11), (4, 6), (2, 3)], [(9, 9), (5, 5), (3, 3), (1, 1)]]
)
def test_output_shape_and_levels_used(sizes):
    torch.manual_seed(0)
    head = _head(eval_seed=0).eval()
    feats = _features(sizes)
    with torch.no_grad():
        out = head(feats)
        assert out.shape == (2, 3, *sizes[1])  # first selected level (default: last three)
        for i in range(4):
            changed = list(feats)
            changed[i] = feats[i] + 1.0
            assert torch.allclose(head(changed), out) == (i == 0), f"level {i}"
    all_four = _head(in_index=(0, 1, 2, 3), norm="bn", eval_seed=0).eval()
    assert all_four.squeeze[0].in_channels == sum(CHANNELS)
    assert all_four(feats).shape == (2, 3, *sizes[0])
    with pytest.raises(ValueError, match="levels"):
        head(feats[:3])


def test_structure_and_parameter_count_of_cpal_t_head():
    head = LightHamHead([320, 640, 1280, 2560], num_classes=9)
    assert isinstance(head.squeeze[1], nn.GroupNorm) and head.squeeze[1].num_groups == 32
    assert head.squeeze[0].in_channels == 640 + 1280 + 2560 and head.squeeze[0].bias is None
    assert head.hamburger.ham_in.bias is not None  # lower bread: conv with bias, no norm
    assert isinstance(head.hamburger.ham_out[1], nn.GroupNorm) and len(head.hamburger.ham_out) == 2
    nmf = head.hamburger.ham
    got = (nmf.S, nmf.R, nmf.train_steps, nmf.eval_steps, nmf.inv_t, nmf.rand_init)
    assert got == (1, 64, 6, 7, 1.0, True)  # mmseg NMF2D: MD_S, MD_R, steps, inv_t 1, rand
    assert head.dropout.p == 0.1
    conv_norm = 512 * 2  # a norm's weight and bias
    expected = (
        (4480 * 512 + conv_norm)  # squeeze
        + (512 * 512 + 512)  # ham_in
        + (512 * 512 + conv_norm)  # ham_out
        + (512 * 512 + conv_norm)  # align
        + (512 * 9 + 9)  # classifier
    )
    n = sum(p.numel() for p in head.parameters())
    authors = LightHamHead([320, 640, 1280, 2560], num_classes=9, in_index=(0, 1, 2, 3), norm="bn")
    n_authors = sum(p.numel() for p in authors.parameters())
    print(f"LightHamHead CPAL-T, 9 classes: {n:,} (last three, GN); {n_authors:,} (all four, BN)")
    assert n == expected
    assert n_authors == expected + 320 * 512
    with pytest.raises(ValueError, match="GroupNorm"):
        LightHamHead([8, 8], channels=20, ham_channels=20, num_classes=2)


def test_nmf_keeps_non_negativity():
    torch.manual_seed(0)
    nmf = NMF2D(md_r=8).train()
    x = torch.relu(torch.randn(3, 16, 7, 5))
    bases, coef = nmf.factorize(x)
    assert bases.shape == (3, 16, 8) and coef.shape == (3, 35, 8)
    assert (bases >= 0).all() and (coef >= 0).all()
    out = nmf(x)
    assert out.shape == x.shape and (out >= 0).all()
    # MD_S splits the channels into S matrices of D = C / S rows.
    two = NMF2D(md_s=2, md_r=4)
    assert two.factorize(x)[0].shape == (6, 8, 4)
    with pytest.raises(ValueError, match="MD_S"):
        NMF2D(md_s=3)(x)


def test_nmf_reconstructs_a_low_rank_non_negative_matrix():
    x = _low_rank()
    errors = []
    for steps in (1, 7, 50, 500):
        nmf = NMF2D(md_r=4, eval_steps=steps, eval_seed=1).eval()
        errors.append(((nmf(x) - x).norm() / x.norm()).item())
    assert errors == sorted(errors, reverse=True), errors  # multiplicative updates descend
    assert errors[-1] < 0.01, errors


def test_train_and_eval_steps():
    calls = []

    class Counting(NMF2D):
        def local_step(self, x, bases, coef):
            calls.append(self.training)
            return super().local_step(x, bases, coef)

    nmf = Counting(md_r=4)
    x = _low_rank()
    nmf.train()
    assert nmf.steps == 6
    nmf(x)
    assert calls == [True] * 6
    calls.clear()
    nmf.eval()
    assert nmf.steps == 7
    nmf(x)
    assert calls == [False] * 7
    # Same bases (same seed), different number of steps: different outputs.
    torch.manual_seed(0)
    y_train = nmf.train()(x)
    torch.manual_seed(0)
    y_eval = nmf.eval()(x)
    assert not torch.allclose(y_train, y_eval)


def test_eval_is_deterministic_given_a_seed():
    head = _head().eval()
    feats = _features()
    with torch.no_grad():
        torch.manual_seed(3)
        a = head(feats)
        torch.manual_seed(3)
        b = head(feats)
        c = head(feats)  # rand_init: new bases on every call
    assert torch.equal(a, b)
    assert not torch.equal(a, c)

    seeded = _head(eval_seed=7).eval()
    seeded.load_state_dict(head.state_dict())
    state = torch.get_rng_state()
    with torch.no_grad():
        d, e = seeded(feats), seeded(feats)
    assert torch.equal(d, e)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    seeded.train()  # in training the bases stay random
    assert not torch.equal(seeded(feats), seeded(feats))


def test_fixed_bases_without_rand_init():
    torch.manual_seed(0)
    nmf = NMF2D(md_r=4, rand_init=False, channels=16)
    assert nmf.bases.shape == (1, 16, 4) and "bases" in nmf.state_dict()
    x = _low_rank()
    assert torch.equal(nmf(x), nmf(x))
    with pytest.raises(ValueError, match="channels"):
        NMF2D(rand_init=False)


@pytest.mark.parametrize("one_step_grad", [False, True])
def test_gradients_reach_every_parameter(one_step_grad):
    torch.manual_seed(0)
    head = _head(one_step_grad=one_step_grad).train()
    head(_features()).square().mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_hamburger_is_residual_and_runs_nmf_in_float32():
    torch.manual_seed(0)
    ham = Hamburger(32, num_groups=8, md_r=4, eval_seed=0).eval()
    x = torch.randn(2, 32, 5, 6)
    out = ham(x)
    assert out.shape == x.shape and (out >= 0).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ham.ham(torch.relu(x).bfloat16())
    assert y.dtype == torch.bfloat16 and (y >= 0).all()
