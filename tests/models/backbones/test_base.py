"""The stream state's token layout [prefix | patches | extra] and the stream scope."""

import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import StreamState, active_stream, stream_scope
from rsfusion.models.backbones.swin import SwinBackbone
from rsfusion.models.backbones.vit import ViTBackbone


def _state(prefix: int = 1, extra: int = 0) -> StreamState:
    h, w, c = 3, 4, 5
    data = torch.arange(2 * (prefix + h * w) * c, dtype=torch.float32).view(2, -1, c)
    state = StreamState(data, (h, w), prefix)
    return state.with_extra(-torch.ones(2, extra, c)) if extra else state


def test_extra_tokens_stay_apart_from_the_patches():
    state = _state(prefix=1, extra=2)
    assert state.extra == 2 and state.data.shape[1] == 1 + 12 + 2
    assert state.patches().shape == (2, 12, 5) and state.extra_tokens().eq(-1).all()
    doubled = state.with_patches(state.patches() * 2)
    assert torch.equal(doubled.extra_tokens(), state.extra_tokens())
    assert torch.equal(doubled.data[:, :1], state.data[:, :1])
    plain, prompts = state.drop_extra()
    assert plain.extra == 0 and torch.equal(plain.data, _state(prefix=1).data)
    assert torch.equal(prompts, state.extra_tokens())


def test_spatial_operators_see_only_the_patch_grid():
    state = _state(prefix=1, extra=2)
    seen = []

    def conv(grid):
        seen.append(grid)
        return nn.functional.avg_pool2d(grid, 3, 1, 1)

    out = state.map_patches(conv)
    assert seen[0].shape == (2, 5, 3, 4)  # the h x w grid, no prefix or prompt token in it
    grid = state.patches().transpose(1, 2).reshape(2, 5, 3, 4)
    assert torch.equal(seen[0], grid)
    prefix, patches, extra = state.split(out)
    assert torch.equal(prefix, state.data[:, :1]) and extra.eq(-1).all()
    torch.testing.assert_close(patches, conv(grid).flatten(2).transpose(1, 2))


def test_vit_attention_sees_prompt_tokens_and_stage_output_drops_them():
    torch.manual_seed(0)
    vit = ViTBackbone("vit_small_patch14_dinov2", depth=2, embed_dim=32, num_heads=2, img_size=28)
    with torch.no_grad():  # DINOv2's 1e-5 layer scales would hide attention's effect
        for m in vit.modules():
            if isinstance(m, LayerScale):
                m.gamma.fill_(1.0)
    state = vit.embed(torch.rand(1, 3, 28, 28))
    with torch.no_grad():
        a = vit.run_block(0, 0, state.with_extra(torch.zeros(1, 3, 32)))
        b = vit.run_block(0, 0, state.with_extra(torch.randn(1, 3, 32)))
        assert a.extra == 3 and not torch.allclose(a.patches(), b.patches())
        out = vit.stage_output(0, a)
        assert torch.equal(out, vit.stage_output(0, a.drop_extra()[0]))


def test_swin_windows_refuse_prompt_tokens_by_a_named_error():
    swin = SwinBackbone(
        "swin_tiny_patch4_window7_224", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]
    )
    state = swin.embed(torch.rand(1, 3, 32, 32)).with_extra(torch.zeros(1, 2, 16))
    with pytest.raises(BlockSplitError, match="extra"):
        swin.run_block(0, 0, state)


def test_stream_scope_names_the_stream_and_refuses_others():
    assert active_stream() is None
    with stream_scope("x"):
        assert active_stream() == "x"
    assert active_stream() is None
    with pytest.raises(ValueError, match="stream"), stream_scope("depth"):
        pass
