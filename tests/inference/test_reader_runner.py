"""Background window reader and model runner: same data as plain reads, TTA, precision."""

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from rsfusion.data.windows import batched, plan_windows
from rsfusion.errors import MissingFileError, PredictionError, UserError
from rsfusion.inference.reader import InputNorm, PairSpec, WindowReader, read_window
from rsfusion.inference.runner import ModelRunner, resolve_device, resolve_precision


def _spec(root, **kw):
    return PairSpec(
        rgb=root / "top" / "top_mosaic_09cm_area2.tif",
        x=root / "dsm" / "dsm_09cm_matching_area2.tif",
        norm=InputNorm(
            rgb_mean=np.full((3, 1, 1), 100, np.float32),
            rgb_std=np.full((3, 1, 1), 50, np.float32),
            x_offset=kw.get("x_offset", 10.0),
            x_scale=kw.get("x_scale", 2.0),
        ),
    )


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_reader_matches_plain_reads_in_plan_order(vaihingen_root, threads):
    spec = _spec(vaihingen_root)
    wins = plan_windows(40, 48, 16, 12)
    batches = list(batched(wins, 3))
    got = list(WindowReader(spec, batches, 16, threads=threads, prefetch=2))
    assert [list(b) for b, _, _ in got] == [list(b) for b in batches]
    with rasterio.open(spec.rgb) as a, rasterio.open(spec.x) as b:
        for batch, rgb, x in got:
            for w, r, s in zip(batch, rgb, x):
                assert np.array_equal(r, a.read(window=w))  # raw: the file's uint8
                assert np.array_equal(s, b.read(window=w))
            assert rgb.dtype == np.uint8 and x.dtype == np.float32
            r, s = spec.norm(torch.from_numpy(rgb), torch.from_numpy(x))
            assert torch.allclose(r, (torch.from_numpy(rgb).float() - 100) / 50)
            assert torch.allclose(s, (torch.from_numpy(x) - 10.0) / 2.0)


def test_norm_zeroes_x_without_data_and_border_padding(vaihingen_root):
    """Windows past the raster edge: RGB padded with 0 before normalisation, X with NaN -> 0."""
    spec = _spec(vaihingen_root)
    (_, rgb, x), = WindowReader(spec, [[Window(40, 30, 16, 16)]], 16, threads=0)  # fmt: skip
    assert rgb.dtype == np.uint8 and (rgb[:, :, 10:, :] == 0).all()
    assert np.isnan(x[:, :, 10:, :]).all() and np.isfinite(x[:, :, :10, :8]).all()
    r, s = spec.norm(torch.from_numpy(rgb), torch.from_numpy(x))
    assert torch.allclose(r[:, :, 10:], torch.tensor(-2.0)) and (s[:, :, 10:] == 0).all()
    assert torch.isfinite(s).all()


def test_border_windows_are_padded_like_training(vaihingen_root):
    with rasterio.open(vaihingen_root / "dsm" / "dsm_09cm_matching_area2.tif") as src:
        out = read_window(src, Window(40, 30, 16, 16), 16, fill=np.nan)
    assert np.isnan(out[:, 10:, :]).all() and np.isfinite(out[:, :10, :8]).all()


def test_reader_errors_reach_the_consumer(vaihingen_root, tmp_path):
    spec = PairSpec(tmp_path / "missing.tif", None, InputNorm(np.zeros(3), np.ones(3)))
    with pytest.raises(MissingFileError, match="orthophoto .*missing.tif: no such file"):
        list(WindowReader(spec, [[Window(0, 0, 8, 8)]], 8, threads=2))


@pytest.mark.parametrize("threads", [0, 2])
def test_a_truncated_raster_is_an_error_naming_it(vaihingen_root, tmp_path, threads):
    x = tmp_path / "dsm.tif"
    data = (vaihingen_root / "dsm" / "dsm_09cm_matching_area2.tif").read_bytes()
    x.write_bytes(data[: len(data) * 2 // 3])  # the header opens, the last blocks are gone
    rgb = vaihingen_root / "top" / "top_mosaic_09cm_area2.tif"
    spec = PairSpec(rgb, x, InputNorm(np.zeros(3), np.ones(3)))
    with rasterio.open(x) as src:
        wins = [[w] for w in plan_windows(src.height, src.width, 16)]
    with pytest.raises(PredictionError, match=r"cannot read X raster .*dsm.tif: .*truncated"):
        list(WindowReader(spec, iter(wins), 16, threads=threads))


def test_reader_consumes_a_lazy_plan_as_it_goes(vaihingen_root):
    rgb = vaihingen_root / "top" / "top_mosaic_09cm_area2.tif"
    spec = PairSpec(rgb, None, InputNorm(np.zeros(3), np.ones(3)))
    taken = []

    def plan():
        for i in range(10**9):  # never materialised
            taken.append(i)
            yield [Window(0, 0, 8, 8)]

    reader = iter(WindowReader(spec, plan(), 8, threads=2, prefetch=3))
    for _ in range(4):
        next(reader)
    reader.close()
    assert len(taken) <= 4 + 3  # read so far plus the batches read ahead


def test_norm_treats_infinity_as_unknown():
    norm = InputNorm(np.full(3, 1.0), np.full(3, 2.0), x_offset=10.0, x_scale=5.0)
    rgb = torch.tensor([1.0, np.inf, -np.inf, np.nan]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    x = torch.tensor([20.0, np.inf, -np.inf, np.nan]).reshape(1, 1, 1, 4)
    r, s = norm(rgb.clone(), x)
    assert r[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert s[0, 0, 0].tolist() == [2.0, 0.0, 0.0, 0.0]
    r8, _ = norm(torch.full((1, 3, 1, 2), 3, dtype=torch.uint8), None)
    assert r8.flatten().tolist() == [1.0] * 6


class _PerPixel(nn.Module):
    """Per-pixel logits: the flipped view, once flipped back, equals the plain view."""

    def forward(self, rgb, x=None):
        return torch.cat([2 * rgb[:, :1], -rgb[:, 1:2]], 1)


def test_flip_and_scales_return_logits_on_the_input_grid():
    rgb = np.random.default_rng(0).normal(size=(2, 3, 8, 12)).astype(np.float32)
    plain = ModelRunner(_PerPixel(), device="cpu", precision="fp32")(rgb)
    flipped = ModelRunner(_PerPixel(), device="cpu", precision="fp32", flip=True)(rgb)
    # without the flip back the sum would be plain + mirrored plain
    assert np.allclose(flipped, 2 * plain, atol=1e-5)
    multi = ModelRunner(_PerPixel(), device="cpu", precision="fp32", scales=(0.5, 1.0, 1.5))(rgb)
    assert multi.shape == plain.shape and not np.allclose(multi, 3 * plain)


def test_drop_zeroes_one_input():
    seen = {}

    class Spy(nn.Module):
        def forward(self, rgb, x=None):
            seen["rgb"], seen["x"] = rgb.clone(), x.clone()
            return rgb[:, :2]

    rgb, x = np.ones((1, 3, 4, 4), np.float32), np.ones((1, 1, 4, 4), np.float32)
    ModelRunner(Spy(), device="cpu", precision="fp32", drop="x")(rgb, x)
    assert seen["rgb"].eq(1).all() and seen["x"].eq(0).all()
    ModelRunner(Spy(), device="cpu", precision="fp32", drop="rgb")(rgb, x)
    assert seen["rgb"].eq(0).all() and seen["x"].eq(1).all()


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="fp16 autocast is for GPUs"):
        resolve_precision("fp16", cpu)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

        def forward(self, rgb, x=None):
            return self.net(rgb)

    conv = Conv()
    rgb = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    ref = ModelRunner(conv, device="cpu", precision="fp32")(rgb)
    fast = ModelRunner(conv, device="cpu", precision="bf16", channels_last=True)(rgb)
    assert fast.dtype == np.float32 and np.allclose(fast, ref, atol=0.1)
    assert (fast.argmax(1) == ref.argmax(1)).mean() > 0.9


def test_views_are_padded_to_the_model_multiple_and_cropped_back():
    class Strict(nn.Module):
        def forward(self, rgb, x=None):
            assert rgb.shape[-2] % 8 == 0 and rgb.shape[-1] % 8 == 0, rgb.shape
            return rgb[:, :2]

    rgb = np.ones((1, 3, 20, 28), np.float32)
    runner = ModelRunner(Strict(), device="cpu", precision="fp32", scales=(0.75, 1.0),
                         flip=True, pad_multiple=8)  # fmt: skip
    assert runner(rgb).shape == (1, 2, 20, 28)
    with pytest.raises(AssertionError):
        ModelRunner(Strict(), device="cpu", precision="fp32")(rgb)


def test_runner_keeps_first_engine_stages_in_float32_only_with_reduced_precision():
    from rsfusion.models.base import SegmentationModel

    class Engine(SegmentationModel, _PerPixel):
        has_fp32_stages = True

    class Plain(SegmentationModel, _PerPixel):  # declares no float32 stages: left alone
        pass

    assert ModelRunner(Plain(), device="cpu", precision="bf16").model.fp32_stages == 0
    assert ModelRunner(Engine(), device="cpu", precision="bf16").model.fp32_stages == 1
    assert (
        ModelRunner(Engine(), device="cpu", precision="bf16", fp32_stages=2).model.fp32_stages == 2
    )
    assert ModelRunner(Engine(), device="cpu", precision="fp32").model.fp32_stages == 0


def test_integer_x_with_nodata_reads_as_nan_then_zero(tmp_path):
    """An int16 DSM with nodata: NaN where it has no data (and past its edge), 0 once normalised."""
    from rasterio.transform import from_origin

    data = np.arange(12 * 12, dtype=np.int16).reshape(1, 12, 12)
    data[0, :2, :3] = -9999
    path = tmp_path / "dsm_int16.tif"
    profile = dict(driver="GTiff", width=12, height=12, count=1, dtype="int16", nodata=-9999,
                   crs="EPSG:32632", transform=from_origin(0, 12, 1, 1))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    spec = PairSpec(path, path, InputNorm(np.zeros(1), np.ones(1), x_offset=100.0, x_scale=2.0))
    wins = [Window(0, 0, 8, 8), Window(8, 8, 8, 8)]  # the second reaches past the edge
    (_, _, x), = WindowReader(spec, [wins], 8, threads=0)  # fmt: skip
    assert x.dtype == np.float32
    assert np.isnan(x[0, 0, :2, :3]).all() and np.isnan(x[1, 0, 4:, :]).all()
    assert x[0, 0, 3, 3] == data[0, 3, 3]
    _, s = spec.norm(torch.zeros(2, 1, 8, 8), torch.from_numpy(x))
    assert (s[0, 0, :2, :3] == 0).all() and s[0, 0, 3, 3] == (data[0, 3, 3] - 100.0) / 2.0


def test_device_names_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda: no CUDA GPU is visible.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="--device gpu: not a device name"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="2 GPU"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_valid_pixels_miss_x_nodata_non_finite_and_outside_x(tmp_path):
    """Issue 18 item 7: where X has no data (nodata, NaN, +-inf, or outside the X raster when
    warped with --align) the pixel is missing; a warped X is NaN there, never a filler 0."""
    from rasterio.transform import from_origin

    from rsfusion.inference.reader import ValidPixels, open_pair

    def write(path, data, origin, nodata=None):
        profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype.name, crs="EPSG:32632",
                       transform=from_origin(origin, 16, 1, 1), nodata=nodata)  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    rgb = write(tmp_path / "rgb.tif", np.full((3, 16, 16), 9, np.uint8), 0)
    dsm = np.full((1, 16, 16), 5.0, np.float32)  # no nodata declared: 0 would look like data
    dsm[0, 0, :3] = [-1, np.nan, np.inf]
    x = write(tmp_path / "x.tif", dsm, 8, nodata=-1)  # covers columns 8..15 of the RGB
    norm = InputNorm(np.zeros(3), np.ones(3))
    grid = (rasterio.crs.CRS.from_epsg(32632), from_origin(0, 16, 1, 1), 16, 16)
    spec = PairSpec(rgb, x, norm, x_grid=grid)
    with open_pair(spec) as (src, xsrc):
        valid = ValidPixels(src, xsrc)
        rows = valid.rows(0, 16)
        assert not rows[:, :8].any()  # outside X
        assert not rows[0, 8:11].any() and rows[0, 11:].all() and rows[1:, 8:].all()
        assert valid.x_missing == 16 * 8 + 3
        (_, _, xw), = WindowReader(spec, [[Window(0, 0, 16, 16)]], 16, threads=0)  # fmt: skip
        assert np.isnan(xw[0, 0, :, :8]).all() and (xw[0, 0, 1:, 8:] == 5).all()
        assert ValidPixels(src).rows(0, 16) is None  # RGB without a mask: all valid
