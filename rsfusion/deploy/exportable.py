"""A model made traceable for ONNX export, for the duration of a ``with`` block.

:func:`exportable` changes a model in place while the block runs and restores it after:

* adaptive average pooling to a size that does not divide the input (UPerNet's pyramid pooling
  with bins 1, 2, 3, 6 on a 16 x 16 map) has no ONNX operator; with the window fixed at export
  it is the same as two averaging matrices, one per axis (:class:`MatrixAdaptiveAvgPool2d`);
* the Hamburger head's NMF draws random bases on every call (CPAL-T): the exported graph gets
  one fixed draw (:func:`fixed_nmf_bases`), so the ONNX model is deterministic;
* position embeddings resampled to the token grid on every call (timm's ViT with a dynamic
  image size, SAM) depend on the weights and the window only: they become constants of the
  graph, computed before tracing (bicubic resampling with antialiasing has no ONNX operator);
* LoRA layers are folded into their weights (one matrix product per layer, as prediction does).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MatrixAdaptiveAvgPool2d",
    "constant_resamples",
    "exportable",
    "fixed_nmf_bases",
    "pooling_matrix",
]

#: functions that resample a position embedding (a parameter) to a grid, by the module that
#: calls them: while exporting, their results are constants
RESAMPLERS = (
    ("timm.models.vision_transformer", "resample_abs_pos_embed"),
    ("rsfusion.models.backbones.sam", "resample_abs_pos_embed_nhwc"),
)


def pooling_matrix(size: int, out: int) -> Tensor:
    """(out, size) matrix whose row i averages the input cells of adaptive pooling bin i.

    Bin i covers ``[floor(i * size / out), ceil((i + 1) * size / out))``, as torch's adaptive
    average pooling.

    Example:
        >>> pooling_matrix(4, 3)
        tensor([[0.5000, 0.5000, 0.0000, 0.0000],
                [0.0000, 0.5000, 0.5000, 0.0000],
                [0.0000, 0.0000, 0.5000, 0.5000]])
    """
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products (exportable for any output size).

    Example:
        >>> x = torch.rand(2, 3, 16, 10)
        >>> pool = MatrixAdaptiveAvgPool2d((6, 3))
        >>> torch.allclose(pool(x), F.adaptive_avg_pool2d(x, (6, 3)), atol=1e-6)
        True
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed at export: constants in the graph
        size = self.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or h, ow or w
        rows = pooling_matrix(h, oh).to(x)
        cols = pooling_matrix(w, ow).to(x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def _needs_matrix(pool: nn.AdaptiveAvgPool2d) -> bool:
    size = pool.output_size
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    return any(s not in (1, None) for s in sizes)


@contextlib.contextmanager
def _matrix_pools(model: nn.Module) -> Iterator[int]:
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and _needs_matrix(child):
                swapped.append((parent, name, child))
                setattr(parent, name, MatrixAdaptiveAvgPool2d(child.output_size))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@contextlib.contextmanager
def fixed_nmf_bases(model: nn.Module, seed: int = 0) -> Iterator[list[str]]:
    """Every randomly initialised NMF of ``model`` (the Hamburger head) uses one fixed draw of
    bases, the same for every sample, while the block runs; yields their module names.

    The draw is the first sample's with the module's ``eval_seed`` (``seed`` where it has
    none): a batch of one gives PyTorch's logits with that seed. The bases are drawn on the
    first call (outside the trace) and are constants of the exported graph.
    """
    from rsfusion.models.heads.ham import NMF2D

    patched: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, NMF2D) and module.bases is None:
            module._draw = _fixed_draw(module, seed)  # type: ignore[method-assign]
            patched.append((name, module))
    try:
        yield [name for name, _ in patched]
    finally:
        for _, module in patched:
            del module._draw  # back to the class's method


def _fixed_draw(module: nn.Module, seed: int) -> Callable[..., Tensor]:
    cache: dict[int, Tensor] = {}
    chosen = module.eval_seed if module.eval_seed is not None else seed

    def draw(
        batch: int, d: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        key = int(d)  # a traced size while tracing: its value (fixed by the window)
        if key not in cache:
            gen = torch.Generator().manual_seed(int(chosen))
            cache[key] = F.normalize(torch.rand(module.S, key, module.R, generator=gen), dim=1)
        return cache[key].to(device).repeat(batch, 1, 1)

    return draw


def _nmf_seeds(model: nn.Module, seed: int = 0) -> dict[str, int]:
    """The seed :func:`fixed_nmf_bases` uses for each randomly initialised NMF of ``model``."""
    from rsfusion.models.heads.ham import NMF2D

    return {
        name: int(m.eval_seed if m.eval_seed is not None else seed)
        for name, m in model.named_modules()
        if isinstance(m, NMF2D) and m.bases is None
    }


def _plain(value: object) -> object:
    """A hashable form of call arguments; traced sizes (tensors while tracing) as numbers."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else (tuple(value.shape), id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    return value


@contextlib.contextmanager
def constant_resamples() -> Iterator[dict[tuple, Tensor]]:
    """While the block runs, each :data:`RESAMPLERS` function returns, for the same embedding
    and grid, the result of its first call: computed outside the trace (the warm-up call), it
    is a constant of the traced graph. Yields the cache."""
    import importlib

    cache: dict[tuple, Tensor] = {}
    patched = []
    for module_name, name in RESAMPLERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(module, name, None)
        if original is None:
            continue

        def cached(posemb: Tensor, *args: object, _fn=original, **kwargs: object) -> Tensor:
            key = (_fn.__name__, id(posemb), _plain(args), _plain(kwargs))
            if key not in cache:
                out = _fn(posemb, *args, **kwargs)
                if torch.jit.is_tracing():  # not seen before the trace: traced as it is
                    return out
                cache[key] = out.detach()
            return cache[key]

        setattr(module, name, cached)
        patched.append((module, name, original))
    try:
        yield cache
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


@contextlib.contextmanager
def exportable(model: nn.Module, seed: int = 0) -> Iterator[dict[str, object]]:
    """``model`` (in evaluation mode) made exportable while the block runs, then restored.

    Yields what was changed: ``pools`` (adaptive poolings as matrices), ``nmf_seeds`` (NMF
    name -> seed of its fixed bases), ``lora`` (LoRA layers folded),
    ``constant_position_embeddings`` (the cache of resampled embeddings; filled by the first
    call, which must come before tracing).
    """
    from rsfusion.models.peft.lora import LoRALinear

    was_training = model.training
    model.eval()
    # the layers not folded yet (a prediction runner may have folded some before)
    lora = [
        m for m in model.modules()
        if isinstance(m, LoRALinear) and m.foldable and not getattr(m, "_folded", None)
    ]  # fmt: skip
    with (
        _matrix_pools(model) as pools,
        fixed_nmf_bases(model, seed),
        constant_resamples() as resampled,
    ):
        try:
            for layer in lora:
                layer.fold()
            yield {
                "pools": pools,
                "nmf_seeds": _nmf_seeds(model, seed),
                "lora": len(lora),
                "constant_position_embeddings": resampled,
            }
        finally:
            for layer in lora:
                layer.unfold()
            model.train(was_training)
