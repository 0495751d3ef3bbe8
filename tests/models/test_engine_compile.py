"""The engine walk and its hooks under torch.compile / SDPA (training speed on GPUs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rsfusion.models.backbones.base as backbone_base
from rsfusion.models import ModelSpec, build_model

VIT = {"backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28},
       "proj_dim": 16, "head_channels": 8}  # fmt: skip
SWIN = {"backbone_kwargs": {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4]},
        "head_dim": 16, "aux_head_dim": 8}  # fmt: skip


def _mobanet() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("mobanet", 6, 3, 1, backbone="vit_small_patch14_dinov2", kwargs=VIT)
    return build_model(spec)


@pytest.mark.parametrize(
    "name,backbone,kwargs",
    [
        ("mobanet", "vit_small_patch14_dinov2", VIT),
        ("ktb", "swin_tiny_patch4_window7_224", SWIN),
    ],
)
def test_backbone_attention_runs_fused_sdpa(name, backbone, kwargs, monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, 6, 3, 1, backbone=backbone, kwargs=kwargs)).eval()
    attn = [m for m in model.backbone.modules() if hasattr(m, "fused_attn")]
    assert attn and all(m.fused_attn for m in attn)  # timm's switch: SDPA, not softmax(QK^T)V
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kw):
        calls.append(args[0].shape)
        return sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    with torch.no_grad():
        model(torch.rand(1, 3, 56, 56), torch.rand(1, 1, 56, 56))
    assert len(calls) >= 2 * len(attn)  # every attention module, on both streams


def test_engine_walk_and_hooks_trace_without_graph_breaks():
    """torch._dynamo.explain on a tiny MoBaNet in training: one graph, no breaks (before the
    stream scope kept a plain list while tracing, its ContextVar broke the graph at every
    backbone call: 13 breaks here, 21 with a depth-4 ViT)."""
    model = _mobanet().train()
    rgb, x = torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28)
    torch._dynamo.reset()
    out = torch._dynamo.explain(model)(rgb, x)
    assert out.graph_break_count == 0, [r.reason for r in out.break_reasons]
    assert out.graph_count == 1
    assert backbone_base.active_stream() is None  # nothing left entered after tracing
