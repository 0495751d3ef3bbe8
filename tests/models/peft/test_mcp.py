"""MCPBlock / MCP: CPAL's multi-modal cross prompter (CPAL paper, TCSVT 2025, eq. 7-12)."""

import math

import pytest
import torch
from torch import nn

from rsfusion.models.backbones.base import active_stream
from rsfusion.models.peft.mcp import MCP, MCPBlock

# InternImage-H (CPAL-L's backbone): stage widths and depths.
H_CHANNELS = (320, 640, 1280, 2560)
H_DEPTHS = (6, 6, 32, 6)
# Paper Table IX (FMB, InternImage-H): MCP parameters by inserted stages, in millions.
TABLE_IX_MCP = {"4": 0.15, "3-4": 0.56, "2-4": 0.60, "1-4": 0.62}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trunc2(n: int) -> float:
    return math.floor(n / 1e4) / 100  # millions, truncated to two decimals


def test_parameter_count_per_block_matches_formula_and_table_ix():
    for c in (8, 64, *H_CHANNELS):
        block = MCPBlock(c)
        # down C->8 (groups 4): 8*C/4 + 8; mid 8->8: 8*2 + 8; up 8->C: C*2 + C.
        assert _count(block) == 2 * c + 8 + 24 + 3 * c == 5 * c + 32 == MCPBlock.num_parameters(c)
        assert _count(MCP(c)) == 10 * c + 64
    assert MCPBlock.num_parameters(96, hidden=16, groups=8) == _count(MCPBlock(96, 16, 8))

    per_stage = [d * _count(MCP(c)) for c, d in zip(H_CHANNELS, H_DEPTHS)]
    ours = {"4": sum(per_stage[3:]), "3-4": sum(per_stage[2:]), "2-4": sum(per_stage[1:])}
    ours["1-4"] = sum(per_stage)
    # What the authors' code registers: every layer builds the pairs of all four widths.
    registered = sum(H_DEPTHS) * 2 * sum(MCPBlock.num_parameters(c) for c in H_CHANNELS)
    lines = [
        f"stages {k}: {v:,} = {v / 1e6:.4f}M (trunc {_trunc2(v):.2f}M) vs Table IX "
        f"{TABLE_IX_MCP[k]:.2f}M -> {'match' if _trunc2(v) == TABLE_IX_MCP[k] else 'MISMATCH'}"
        for k, v in ours.items()
    ]
    lines.append(f"authors' code registers {registered:,} (all four pairs in every layer)")
    message = "MCP vs Table IX (InternImage-H, 2 sub-blocks of 5C+32 per layer):\n" + "\n".join(
        lines
    )
    print(message)
    assert ours == {"4": 153_984, "3-4": 565_632, "2-4": 604_416, "1-4": 624_000}, message
    assert all(_trunc2(ours[k]) == TABLE_IX_MCP[k] for k in ours), message
    assert registered == 2_412_800, message


@pytest.mark.parametrize(("c", "groups", "hidden"), [(30, 4, 8), (64, 4, 6), (10, 3, 9)])
def test_indivisible_widths_raise(c, groups, hidden):
    with pytest.raises(ValueError, match=rf"C={c}.*groups={groups}"):
        MCPBlock(c, hidden=hidden, groups=groups)


def test_zero_prompt_at_init_and_token_map_layouts_agree():
    torch.manual_seed(0)
    block = MCPBlock(16).eval()
    t = torch.randn(2, 12, 16)
    assert torch.equal(block(t), torch.zeros_like(t))
    nn.init.normal_(block.up.weight)
    nn.init.normal_(block.up.bias)
    tokens = block(t)
    grid = t.transpose(1, 2).reshape(2, 16, 3, 4)
    mapped = block(grid)
    assert mapped.shape == grid.shape
    torch.testing.assert_close(mapped.flatten(2).transpose(1, 2), tokens)
    # Per-token (1x1) operator: permuting tokens permutes prompts.
    perm = torch.randperm(12)
    torch.testing.assert_close(block(t[:, perm]), tokens[:, perm])
    # Grouped: output group j of up sees only hidden group j; down's group j only channels of
    # input group j. Changing input group 0 leaves hidden groups 1..3, hence output groups 1..3.
    t2 = t.clone()
    t2[..., :4] += 1.0
    diff = (block(t2) - tokens).abs().amax(dim=(0, 1))
    assert diff[:4].max() > 0 and diff[4:].max() == 0
    with pytest.raises(ValueError, match="MCPBlock"):
        block(torch.randn(2, 12, 8))


def test_default_init_kaiming_down_mid_and_all_layers_learn():
    torch.manual_seed(0)
    block = MCPBlock(32)
    assert block.down.weight.abs().sum() > 0 and block.mid.weight.abs().sum() > 0
    assert block.up.weight.abs().sum() == 0 and block.up.bias.abs().sum() == 0
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    opt = torch.optim.AdamW(block.parameters(), lr=1e-2, weight_decay=0.05)
    t, target = torch.randn(4, 10, 32), torch.randn(4, 10, 32)
    for _ in range(3):
        opt.zero_grad()
        ((block(t) - target) ** 2).mean().backward()
        opt.step()
    moved = {n for n, p in block.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(before), f"did not learn: {set(before) - moved}"


def test_faithful_all_zero_init_only_up_bias_learns():
    torch.manual_seed(0)
    block = MCPBlock(32, faithful=True)
    assert all(p.abs().sum() == 0 for p in block.parameters())
    opt = torch.optim.AdamW(block.parameters(), lr=1e-2, weight_decay=0.05)
    t, target = torch.randn(4, 10, 32), torch.randn(4, 10, 32)
    for _ in range(5):
        opt.zero_grad()
        ((block(t) - target) ** 2).mean().backward()
        opt.step()
    moved = {n for n, p in block.named_parameters() if p.abs().sum() > 0}
    assert moved == {"up.bias"}
    # The prompt is a learnt constant: it ignores the tokens.
    block.eval()
    torch.testing.assert_close(block(t), block(torch.randn_like(t)))


def test_faithful_layout_reproduces_the_authors_view():
    torch.manual_seed(0)
    b, h, w, c = 2, 3, 5, 8
    scrambled = MCPBlock(c, faithful_layout=True).eval()
    plain = MCPBlock(c).eval()
    for p in scrambled.parameters():
        nn.init.normal_(p)
    plain.load_state_dict(scrambled.state_dict())
    x_cl = torch.randn(b, h, w, c)  # the authors' channels-last stream
    # Authors: permute to (B, C, H, W), convolve, .view back to (B, H, W, C).
    conv = nn.Sequential(scrambled.down, scrambled.mid, scrambled.up)
    ref = conv(x_cl.permute(0, 3, 1, 2).contiguous()).view(b, h, w, c)
    tokens = scrambled(x_cl.reshape(b, h * w, c))
    torch.testing.assert_close(tokens, ref.reshape(b, h * w, c))
    mapped = scrambled(x_cl.permute(0, 3, 1, 2))
    torch.testing.assert_close(mapped, ref.permute(0, 3, 1, 2))
    assert not torch.allclose(plain(x_cl.reshape(b, h * w, c)), tokens)
    # faithful implies the layout unless told otherwise.
    assert MCPBlock(c, faithful=True).faithful_layout
    assert not MCPBlock(c, faithful=True, faithful_layout=False).faithful_layout


def test_mcp_interleaves_four_updates_with_shared_blocks():
    torch.manual_seed(0)
    mcp = MCP(16).eval()
    for p in mcp.parameters():
        nn.init.normal_(p, std=0.3)
    mixer_lin, ffn_lin = nn.Linear(16, 16), nn.Linear(16, 16)
    seen: list[str | None] = []

    def mixer(t):
        seen.append(active_stream())
        return mixer_lin(t)

    def ffn(t):
        seen.append(active_stream())
        return ffn_lin(t)

    r, x = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    r_out, x_out = mcp(r, x, mixer, ffn)
    r1 = r + mixer_lin(r) + mcp.p1(x)
    x1 = x + mixer_lin(x) + mcp.p1(r1)
    r2 = r1 + ffn_lin(r1) + mcp.p2(x1)
    x2 = x1 + ffn_lin(x1) + mcp.p2(r2)
    torch.testing.assert_close(r_out, r2)
    torch.testing.assert_close(x_out, x2)
    assert seen == ["rgb", "x", "rgb", "x"]
    # prompt_drop_path wraps every prompt (the authors' DropPath on the prompts).
    r_z, x_z = mcp(r, x, mixer, ffn, prompt_drop_path=torch.zeros_like)
    torch.testing.assert_close(r_z, r + mixer_lin(r) + ffn_lin(r + mixer_lin(r)))
    with pytest.raises(ValueError, match="differ"):
        mcp(r, x[:, :3], mixer, ffn)
