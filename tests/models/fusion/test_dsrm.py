"""DSRM: SegRGB-X's domain-specific refinement module (arXiv 2603.28023 eq. 2-7)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsfusion.models.fusion import DSRM

C, E, K, HEADS, G = 8, 6, 3, 2, 3


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _module(seed: int = 0, live: bool = True) -> DSRM:
    """A small DSRM; ``live`` gives W_o non-zero weights (as after some training)."""
    torch.manual_seed(seed)
    dsrm = DSRM(C, E, num_prompts=K, num_heads=HEADS, grid_size=G)
    if live:
        with torch.no_grad():
            dsrm.out.weight.normal_(0, 0.5)
            dsrm.out.bias.normal_(0, 0.1)
            dsrm.temperature.copy_(torch.tensor([3.0, 0.5]))
    return dsrm


def _inputs(h: int = 5, w: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, C, h, w, generator=g), torch.randn(2, E, generator=g)


def _reference(m: DSRM, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. (2)-(7) with the module docstring's shape choices, one head and row at a time."""
    b, c, h, w = f.shape
    n, d, g = h * w, c // HEADS, G
    up = lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)  # noqa: E731
    mlp = m.prompt_mlp
    chi = torch.softmax(mlp[2](F.gelu(mlp[0](f.mean(dim=(2, 3))))), dim=-1)  # (B, K)
    out = torch.empty_like(f)
    for i in range(b):
        prompt = sum(chi[i, k] * m.prompts[k] for k in range(K))  # (C, g, g)
        q_c = m.q_c.weight.view(c, c) @ up(prompt[None])[0].reshape(c, n)  # (C, N)
        fi = f[i].reshape(c, n)
        k_c, v_c = m.k_c.weight.view(c, c) @ fi, m.v_c.weight.view(c, c) @ fi
        f_c = torch.empty(c, n)
        for hd in range(HEADS):
            rows = slice(hd * d, (hd + 1) * d)
            for r in range(hd * d, (hd + 1) * d):
                cos = torch.stack(
                    [F.cosine_similarity(q_c[r], k_c[j], dim=0, eps=0) for j in range(c)]
                )[rows]
                a = torch.softmax(m.temperature[hd] * cos, dim=0)
                f_c[r] = a @ v_c[rows]
        e = m.embed_mlp
        grid = e[2](F.gelu(e[0](s[i]))).view(c, g, g)
        q_s = up(grid[None])[0].reshape(c, n).T @ m.q_s.weight.T  # (N, C)
        tok = f_c.T
        k_s, v_s = tok @ m.k_s.weight.T, tok @ m.v_s.weight.T
        f_s = torch.empty(n, c)
        for hd in range(HEADS):
            cols = slice(hd * d, (hd + 1) * d)
            a = torch.softmax(q_s[:, cols] @ k_s[:, cols].T / math.sqrt(d), dim=-1)
            f_s[:, cols] = a @ v_s[:, cols]
        out[i] = f[i] + m.out(f_s).T.reshape(c, h, w)
    return out


def test_parameter_count_matches_the_formula():
    for args in [(8, 6, 3, 2, 3), (16, 12, 4, 4, 1), (12, 5, 16, 3, 4), (256, 512, 16, 8, 4)]:
        dim, e, k, h, g = args
        gg = g * g
        expected = (8 + gg) * dim * dim + (e + k + k * gg + gg + 3) * dim + k + h
        assert DSRM.num_parameters(*args) == expected
        if dim <= 16:
            assert _count(DSRM(*args)) == expected
    assert DSRM.num_parameters(256, 512) == 1_778_456  # the module docstring's figure
    assert DSRM(16, 4).prompts.shape == (16, 16, 4, 4)  # defaults K = 16, g = 4


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="num_heads dividing dim"):
        DSRM(10, 4, num_heads=4)
    dsrm = _module(live=False)
    f, s = _inputs()
    with pytest.raises(ValueError, match="embedding"):
        dsrm(f, s[:, :4])
    with pytest.raises(ValueError, match="feature"):
        dsrm(f[:, :4], s)


@pytest.mark.parametrize("hw", [(17, 23), (1, 1), (3, 3), (2, 9)])
def test_exact_identity_at_init(hw):
    dsrm = _module(live=False)
    f, s = _inputs(*hw)
    assert torch.equal(dsrm(f, s), f)
    assert torch.all(dsrm.out.weight == 0) and torch.all(dsrm.out.bias == 0)


@pytest.mark.parametrize("hw", [(17, 23), (1, 2), (3, 3), (4, 1)])
def test_any_size_and_gradients_reach_every_parameter(hw):
    dsrm = _module()
    f, s = _inputs(*hw)
    out = dsrm(f, s)
    assert out.shape == f.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, p in dsrm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_by_one_map_has_a_single_key_so_s_cannot_act():
    dsrm = _module()
    f, s = _inputs(1, 1)
    out = dsrm(f, s)
    assert out.shape == f.shape and not torch.equal(out, f)
    torch.testing.assert_close(dsrm(f, torch.randn_like(s)), out)


def test_only_the_output_projection_learns_on_the_first_step():
    dsrm = _module(live=False)
    f, s = _inputs()
    dsrm(f, s).square().sum().backward()
    for name, p in dsrm.named_parameters():
        moving = p.grad is not None and p.grad.abs().sum() > 0
        assert moving == name.startswith("out."), name


def test_matches_the_equations_by_hand():
    dsrm = _module()
    for hw in [(5, 7), (3, 3)]:  # resized grids, and the grid's own size
        f, s = _inputs(*hw)
        torch.testing.assert_close(dsrm(f, s), _reference(dsrm, f, s), rtol=1e-4, atol=1e-5)


def test_output_depends_on_the_embedding():
    dsrm = _module()
    f, s = _inputs(17, 23)
    s2 = torch.randn_like(s)
    out, out2 = dsrm(f, s), dsrm(f, s2)
    assert (out - out2).abs().amax() > 1e-3
    # ... per sample: changing sample 1's embedding leaves sample 0 alone.
    s3 = s.clone()
    s3[1] = s2[1]
    out3 = dsrm(f, s3)
    torch.testing.assert_close(out3[0], out[0])
    assert not torch.allclose(out3[1], out[1])
    # The channel attention (eq. 2-4) does not read S at all.
    f_c, a = dsrm.channel_attention(f)
    assert a.shape == (2, HEADS, C // HEADS, C // HEADS)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, HEADS, C // HEADS))


def test_channel_query_comes_from_the_prompts_and_logits_are_cosines():
    dsrm = _module()
    f, s = _inputs()
    out = dsrm(f, s)
    _, a = dsrm.channel_attention(f)
    with torch.no_grad():
        dsrm.k_c.weight.mul_(7.0)  # cosine logits: the key scale does not matter
    torch.testing.assert_close(dsrm.channel_attention(f)[1], a)
    # With every prompt equal, chi no longer matters: the prompt MLP cannot change the output.
    with torch.no_grad():
        dsrm.k_c.weight.div_(7.0)
        dsrm.prompts.copy_(dsrm.prompts[:1].expand_as(dsrm.prompts))
    before = dsrm(f, s)
    with torch.no_grad():
        for p in dsrm.prompt_mlp.parameters():
            p.normal_()
    torch.testing.assert_close(dsrm(f, s), before)
    assert not torch.allclose(before, out)
    # Heads split the channels: value channels of head 1 never reach head 0's outputs.
    f_c, _ = dsrm.channel_attention(f)
    with torch.no_grad():
        dsrm.v_c.weight[C // HEADS :].normal_()
    f_c2, _ = dsrm.channel_attention(f)
    torch.testing.assert_close(f_c2[:, : C // HEADS], f_c[:, : C // HEADS])
    assert not torch.allclose(f_c2[:, C // HEADS :], f_c[:, C // HEADS :])


def test_spatial_attention_is_a_softmax_over_positions_queried_by_s():
    dsrm = _module()
    f, s = _inputs(4, 6)
    q = dsrm.spatial_queries(s, (3, 3))  # the grid itself, no resizing
    grid = dsrm.embed_mlp(s).view(2, C, G, G).flatten(2).transpose(1, 2)
    torch.testing.assert_close(q, dsrm.q_s(grid))
    with torch.no_grad():  # MLP(S) = 0: Q_s = 0, uniform attention over the N keys
        dsrm.embed_mlp[2].weight.zero_()
        dsrm.embed_mlp[2].bias.zero_()
    f_c, _ = dsrm.channel_attention(f)
    mean_v = dsrm.v_s(f_c.flatten(2).transpose(1, 2)).mean(dim=1, keepdim=True)
    torch.testing.assert_close(dsrm.spatial_attention(f_c, s), mean_v.expand(2, 24, C))
    delta = dsrm(f, s) - f  # the same vector added at every position, whatever S is
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta))
    torch.testing.assert_close(dsrm(f, torch.randn_like(s)), dsrm(f, s))
