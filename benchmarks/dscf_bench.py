"""KTB's DSCF: operator (kernel) count and time of a training step, reference vs fused.

For each of KTB's four stages (Swin-B widths 128-1024 on 64-8 px maps of a 256 px input, the
authors' strides, groups and heads) one forward and backward pass of :class:`DSCF` in its
reference implementation (CPUs: the demo numbers' numerics) and its fused one (GPUs: one
``grid_sample`` for r, x and Q, both offset nets batched, linear layers on channels-last views,
SDPA with the position bias as mask). torch.profiler counts the operators each runs: on a GPU
each is at least one kernel launch, so the count is the launch overhead a step pays.

Not a test: run it by hand on a quiet machine, e.g.

    python benchmarks/dscf_bench.py              # CPU, or the GPU when there is one
    python benchmarks/dscf_bench.py --small      # tiny sizes (CI imports it)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from rsfusion.models.fusion import DSCF
from rsfusion.models.fusion.dscf import dscf_stage_options

#: (channels, map side) of KTB Swin-B's stages at a 256 px input; --small: tiny ones
FULL = ((128, 64), (256, 32), (512, 16), (1024, 8))
SMALL = ((16, 16), (32, 8), (64, 4), (128, 2))


def step(module: DSCF, rgb: torch.Tensor, x: torch.Tensor) -> None:
    """One forward and backward pass (a training step's share of DSCF)."""
    out = module(rgb, x)
    F.mse_loss(out, torch.zeros_like(out)).backward()


#: operators that only make a view (no kernel on any device)
VIEWS = frozenset(
    [
        "view",
        "reshape",
        "_reshape_alias",
        "permute",
        "transpose",
        "t",
        "as_strided",
        "expand",
        "unsqueeze",
        "squeeze",
        "select",
        "slice",
        "unbind",
        "split",
        "chunk",
        "narrow",
        "alias",
        "detach",
        "flatten",
        "unflatten",
        "_unsafe_view",
        "lift_fresh",
        "view_as",
        "expand_as",
        "contiguous",
    ]
)


def kernel_ops(events: list) -> int:
    """Operators that compute (leaf ``aten::`` calls that are not views), forward and backward:
    on a GPU each launches at least one kernel."""
    count = 0
    for e in events:
        name = e.name.removeprefix("aten::")
        if not e.name.startswith("aten::") or name in VIEWS:
            continue
        if not any(c.name.startswith("aten::") for c in e.cpu_children):
            count += 1
    return count


def measure(stage: int, dim: int, side: int, batch: int, fused: bool, device: torch.device,
            repeats: int) -> tuple[int, float]:  # fmt: skip
    """(operators per step, best seconds per step) of one stage's DSCF."""
    torch.manual_seed(0)
    module = DSCF(dim, **dscf_stage_options(stage, (side, side))).to(device).train()
    module.fused = fused
    rgb = torch.randn(batch, dim, side, side, device=device, requires_grad=True)
    x = torch.randn(batch, dim, side, side, device=device, requires_grad=True)
    step(module, rgb, x)  # warm-up: grids cached, kernels chosen
    activities = [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step(module, rgb, x)
    ops = kernel_ops(prof.events())
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(module, rgb, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return ops, best


def run(small: bool, batch: int, repeats: int) -> list[tuple[str, str, str]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for stage, (dim, side) in enumerate(SMALL if small else FULL):
        got = {f: measure(stage, dim, side, batch, f, device, repeats) for f in (False, True)}
        (ops_r, t_r), (ops_f, t_f) = got[False], got[True]
        rows.append((
            f"stage {stage + 1}: C {dim}, {side}^2, batch {batch}",
            f"{ops_r} / {ops_f}",
            f"{1e3 * t_r:.2f} / {1e3 * t_f:.2f} ms ({t_r / t_f:.2f}x)",
        ))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = run(args.small, args.batch, args.repeats)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"\nDSCF forward + backward, reference / fused, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"| {'stage':<32} | {'operators':>11} | time per step |")
    print(f"|{'-' * 34}|{'-' * 13}|---------------|")
    for name, ops, time_ in rows:
        print(f"| {name:<32} | {ops:>11} | {time_} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
