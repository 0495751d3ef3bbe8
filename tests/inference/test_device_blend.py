"""Tests for rsfusion.inference.device_blend: the device path writes what the host path writes."""

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.data.windows import batched, plan_windows
from rsfusion.inference.accumulator import RowBandAccumulator
from rsfusion.inference.blending import edge_aware, weight_map
from rsfusion.inference.device_blend import DeviceBandAccumulator, HostCopies, band_outputs
from rsfusion.inference.memory import choose_batch
from rsfusion.inference.predict import (
    DEFAULT_BATCH,
    PredictOptions,
    device_plan,
    host_outputs,
    load_predictor,
    predict_pair,
)
from rsfusion.inference.runner import ModelRunner


def _stream(acc, height, width, channels, window, overlap, batch_size, tensors):
    rng = np.random.default_rng(0)
    wins = plan_windows(height, width, window, window - overlap)
    base = weight_map(window, overlap, "cosine")
    out, i = [], 0
    for batch in batched(wins, batch_size):
        for win in batch:
            v = rng.normal(size=(channels, window, window)).astype(np.float32)
            w = edge_aware(base, win, height, width)
            acc.add(win, torch.from_numpy(v), torch.from_numpy(w)) if tensors else acc.add(
                win, v, w
            )
            i += 1
        nxt = int(wins[i].row_off) if i < len(wins) else height
        out.extend((r, np.asarray(b), np.asarray(s)) for r, b, s in acc.flush(nxt))
    return out


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_device_band_equals_host_band_bit_for_bit(batch_size):
    args = (75, 101, 6, 32, 8, batch_size)
    host = _stream(RowBandAccumulator(75, 101, 6, 32), *args, tensors=False)
    dev = _stream(DeviceBandAccumulator(75, 101, 6, 32, torch.device("cpu")), *args, tensors=True)
    assert [r for r, _, _ in host] == [r for r, _, _ in dev]
    for (_, hb, hw), (_, db, dw) in zip(host, dev):
        assert np.array_equal(hb, db) and np.array_equal(hw, dw)


def test_device_band_refuses_what_the_host_band_refuses():
    acc = DeviceBandAccumulator(40, 40, 3, 16, torch.device("cpu"))
    with pytest.raises(ValueError, match="expected"):
        acc.add(rasterio.windows.Window(0, 0, 16, 16), torch.zeros(2, 16, 16), torch.ones(16, 16))
    acc.add(rasterio.windows.Window(0, 16, 16, 16), torch.zeros(3, 16, 16), torch.ones(16, 16))
    list(acc.flush(16))
    with pytest.raises(ValueError, match="already flushed"):
        acc.add(rasterio.windows.Window(0, 0, 16, 16), torch.zeros(3, 16, 16), torch.ones(16, 16))


def test_band_outputs_match_the_host_outputs():
    rng = np.random.default_rng(1)
    block = rng.normal(scale=3, size=(6, 20, 30)).astype(np.float32)
    block[:, 0, :3] = 1.5  # ties: the first class wins on both paths
    host = host_outputs(block.copy(), probs=True, confidence=True)
    dev = HostCopies(band_outputs(torch.from_numpy(block), probs=True, confidence=True)).wait()
    assert sorted(dev) == sorted(host) == ["classes", "confidence", "probs"]
    assert np.array_equal(dev["classes"], host["classes"]) and dev["classes"][0, 0, 0] == 0
    for name in ("probs", "confidence"):
        assert dev[name].dtype == np.uint8
        assert np.abs(dev[name].astype(int) - host[name]).max() <= 1
    assert band_outputs(torch.from_numpy(block), False, False).keys() == {"classes"}


def test_choose_batch_fills_the_free_memory_and_stays_in_bounds():
    gib = 1 << 30
    assert choose_batch(80 * gib, 2 * gib, reserved=gib) == 31
    assert choose_batch(80 * gib, 1) == 64 and choose_batch(gib, 2 * gib) == 1
    assert choose_batch(80 * gib, gib, windows=5) == 5


def test_device_plan_off_a_gpu_keeps_the_host_and_the_default_batch(demo_ckpt):
    model, meta = load_predictor(demo_ckpt)
    runner = ModelRunner(model, device="cpu", precision="fp32")
    plan = device_plan(PredictOptions(), runner, meta, 32, 8, (64, 64), 9)
    assert plan == (DEFAULT_BATCH, False)
    assert device_plan(PredictOptions(batch_size=3, blend_on="device"), runner, meta, 32, 8,
                       (64, 64), 9) == (3, True)  # fmt: skip
    with pytest.raises(Exception, match="blend_on"):
        PredictOptions(blend_on="gpu").check()


@pytest.mark.parametrize("x_missing", ["nodata", "predict"])
def test_prediction_blended_on_the_device_writes_the_host_path_pixels(
    demo_ckpt, vaihingen_root, tmp_path, x_missing
):
    rgb = vaihingen_root / "top" / "top_mosaic_09cm_area2.tif"
    x = vaihingen_root / "dsm" / "dsm_09cm_matching_area2.tif"
    model, meta = load_predictor(demo_ckpt)
    read = {}
    for where in ("host", "device"):
        opts = PredictOptions(window=32, overlap=8, batch_size=3, probs=True, confidence=True,
                              device="cpu", precision="fp32", blend_on=where,
                              x_missing=x_missing)  # fmt: skip
        paths = predict_pair(model, meta, rgb, x, tmp_path / where, opts)
        read[where] = {}
        for name, path in paths.items():
            with rasterio.open(path) as src:
                read[where][name] = (src.read(), src.profile["dtype"], src.nodata, src.transform)
    for name, (pixels, dtype, nodata, transform) in read["host"].items():
        got, got_dtype, got_nodata, got_transform = read["device"][name]
        assert (got_dtype, got_nodata, got_transform) == (dtype, nodata, transform)
        if name == "classes":
            assert np.array_equal(got, pixels)
        else:
            assert np.abs(got.astype(int) - pixels).max() <= 1
