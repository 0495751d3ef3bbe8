"""The export-time changes to a model: exact replacements, and all undone after the block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsfusion.deploy.exportable import (
    MatrixAdaptiveAvgPool2d,
    constant_resamples,
    exportable,
    fixed_nmf_bases,
)
from rsfusion.models.heads.ham import NMF2D
from rsfusion.models.peft.lora import LoRALinear
from tests.deploy.cases import build


@pytest.mark.parametrize(
    ("size", "out"), [((16, 16), (6, 6)), ((3, 3), 6), ((7, 10), (3, None)), ((5, 9), (1, 4))]
)
def test_matrix_pooling_is_adaptive_average_pooling(size, out):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(
        MatrixAdaptiveAvgPool2d(out)(x), F.adaptive_avg_pool2d(x, out), atol=1e-6, rtol=0
    )


def test_fixed_nmf_bases_are_one_draw_for_every_window():
    nmf = NMF2D(md_r=4).eval()  # random bases on every call, no eval_seed
    x = torch.rand(3, 16, 5, 6)
    with torch.no_grad():
        assert not torch.equal(nmf(x[:1]), nmf(x[:1]))  # PyTorch: another draw each call
        with fixed_nmf_bases(nmf, seed=3) as names:
            a, b = nmf(x), nmf(x[1:2])
        assert names == [""]
        torch.testing.assert_close(a[1:2], b)  # the same bases whatever the batch position
        nmf.eval_seed = 3
        torch.testing.assert_close(a[:1], nmf(x[:1]))  # = PyTorch's draw with that seed
    assert "_draw" not in vars(nmf)  # the class's method again


def test_position_embeddings_are_computed_once_then_constant():
    import timm.models.vision_transformer as vt

    original = vt.resample_abs_pos_embed
    pos = torch.randn(1, 1 + 16, 8)
    with constant_resamples() as cache:
        assert vt.resample_abs_pos_embed is not original
        first = vt.resample_abs_pos_embed(
            pos, new_size=(3, 3), old_size=(4, 4), num_prefix_tokens=1
        )
        again = vt.resample_abs_pos_embed(
            pos, new_size=(3, 3), old_size=(4, 4), num_prefix_tokens=1
        )
        assert again is first and len(cache) == 1
        torch.testing.assert_close(
            first, original(pos, new_size=(3, 3), old_size=(4, 4), num_prefix_tokens=1)
        )
    assert vt.resample_abs_pos_embed is original


def test_exportable_restores_the_model():
    model, _ = build("cpal")
    model.train()
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    nmf = [m for m in model.modules() if isinstance(m, NMF2D)]
    assert lora and nmf
    with exportable(model) as changes:
        assert not model.training
        assert all(m._folded for m in lora) and "_draw" in vars(nmf[0])
    assert changes["lora"] == len(lora) == 2 and changes["nmf_seeds"]
    assert model.training and not any(m._folded for m in lora) and "_draw" not in vars(nmf[0])

    upernet, _ = build("mobanet")
    pools = [m for m in upernet.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    with exportable(upernet) as changes:
        assert sum(isinstance(m, MatrixAdaptiveAvgPool2d) for m in upernet.modules()) == 3
    assert changes["pools"] == 3
    assert [m for m in upernet.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == pools
    assert not any(isinstance(m, MatrixAdaptiveAvgPool2d) for m in upernet.modules())
