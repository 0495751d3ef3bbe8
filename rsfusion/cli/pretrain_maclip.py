"""``python scripts/pretrain_maclip.py --cfg NAME --clip FILE|NAME --out DIR [--clip-model M]
[--captions DATASET=FILE ...] [--template-captions] [--epochs N] [--batch-size B] [--lr LR]
[--max-samples N] [--set a.b=v ...]``: pre-train MA-CLIP's LoRA pool (SegRGB-X, Sec. III-B).

The (RGB, X, caption) triples are the training samples of the config's dataset (``data``), or
of every source of ``data.joint``: natural images whole, ISPRS tiles as ``data.window`` windows
every ``data.eval_stride`` px; no augmentation. Captions come from a captions file per dataset
(:mod:`rsfusion.data.captions`) or, with ``--template-captions``, from the labels. Only the LoRA
pool is trained (AdamW, eq. 1); CLIP stays frozen. Writes ``<out>/maclip.pt``
(:meth:`MACLIP.save`), ``<out>/maclip_log.json`` (loss per epoch) and, for template captions,
``<out>/captions/<dataset>.tsv``; every file atomically. The samples are fed unnormalised:
:meth:`MACLIP.prepare`'s per-channel min-max makes the embeddings independent of ``rgb_norm``
and ``x_norm``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.config import ConfigError, DataConfig, ExperimentConfig, load_config
from rsfusion.data.captions import (
    match_captions,
    read_captions,
    template_caption,
    window_id,
    write_captions,
)
from rsfusion.errors import UnknownNameError, UserError
from rsfusion.models.maclip import MACLIP, load_clip, pool_key

#: ``--clip`` value for a tiny randomly initialised CLIP (seed 0): the demo's stand-in
RANDOM_TINY = "random-tiny"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsfusion-pretrain-maclip", description=__doc__)
    add = parser.add_argument
    add("--cfg", required=True, help="config name in configs/ or a YAML path")
    add(
        "--clip",
        required=True,
        help=f"local CLIP weights file, an open_clip name (needs net), or {RANDOM_TINY} (a "
        "tiny random CLIP: the demo's stand-in)",
    )
    add(
        "--clip-model",
        help="open_clip architecture of a --clip file without config (ViT-B-16; OpenAI weights: ViT-B-16-quickgelu)",
    )
    add(
        "--captions",
        nargs="+",
        action="extend",
        default=[],
        metavar="DATASET=FILE",
        help="captions file of a dataset (its card, or its data.joint source name)",
    )
    add(
        "--template-captions",
        action="store_true",
        help="caption datasets without a captions file from their labels",
    )
    add("--out", required=True, metavar="DIR", help="output folder (maclip.pt, maclip_log.json)")
    add("--epochs", type=int, default=10)
    add("--batch-size", type=int, help="pairs per step, >= 2 (default: data.batch_size)")
    add("--lr", type=float, default=1e-4, help="AdamW learning rate of the LoRA pool")
    add("--rank", type=int, default=8, help="LoRA rank")
    add("--alpha", type=float, default=8.0, help="LoRA alpha (update scale alpha / rank)")
    add("--max-samples", type=int, help="use at most this many samples per dataset")
    add("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', ...")
    add(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set data.root=/data/nyu",
    )
    return parser  # fmt: skip


@dataclass
class Source:
    """One dataset's training samples: ``read(i)`` gives ``image``, ``image_x`` and ``mask``."""

    name: str
    card: DatasetCard
    modality: str
    ids: list[str]
    read: Callable[[int], dict[str, Any]]
    subject: str  # template captions: "a photo" / "an aerial photo"


def data_sources(data: DataConfig) -> list[tuple[str, DataConfig]]:
    """(name, data section) of each dataset: ``data.joint``'s sources, else the card alone."""
    if data.joint:
        from rsfusion.data.joint import joint_sources

        return [(name, src) for name, src, _ in joint_sources(data)]
    return [(load_card(data.card).name, data)]


def open_source(name: str, data: DataConfig, max_samples: int | None = None) -> Source:
    """The training samples of one dataset (first ``max_samples``)."""
    card = load_card(data.card)
    if data.x is None:
        raise ConfigError(f"data.x is null for '{name}': MA-CLIP pre-training needs an X modality")
    if data.root is None:
        raise ConfigError(f"data.root is not set for '{name}': pass --set data.root=/path")
    pool_key(data.x)  # an unknown modality fails before any file is read
    if card.kind == "natural":
        from rsfusion.data.natural.datamodule import NaturalDataModule

        dm = NaturalDataModule(data)
        ds = dm.make_dataset("train")
        ds.transform = dm.eval_transform  # no random crops: the caption describes the view
        ids = [ref.id for ref in ds.samples]

        def read(i: int) -> dict[str, Any]:
            return ds[i]

        subject = "a photo"
    else:
        from rsfusion.data.datamodule import ISPRSDataModule
        from rsfusion.data.isprs import ISPRSDataset
        from rsfusion.data.samplers import TileGridSampler

        tiles = ISPRSDataModule(data).tiles_of("train")
        ds = ISPRSDataset(data.root, card=card, tiles=tiles, rgb=data.rgb, x=data.x,
                          labels=data.labels, align_x=data.align_x)  # fmt: skip
        grid = TileGridSampler(ds.tiles, ds.res, data.window, data.eval_stride)
        corner = {t.tile_id: t.rgb.grid.bounds for t in ds.tiles}
        queries = [q for _, q in grid.windows]
        ids = [
            window_id(tile, round((corner[tile][3] - q[1].stop) / ds.res[1]),
                      round((q[0].start - corner[tile][0]) / ds.res[0]))
            for tile, q in grid.windows
        ]  # fmt: skip

        def read(i: int) -> dict[str, Any]:
            return ds[queries[i]]

        subject = "an aerial photo"
    if max_samples is not None:
        ids = ids[:max_samples]
    return Source(name, card, data.x, ids, read, subject)


def source_captions(source: Source, files: dict[str, str], template: bool) -> list[str]:
    """The captions of a source's samples, from its file or (``template``) its labels."""
    if source.name in files:
        return match_captions(source.ids, read_captions(files[source.name]), files[source.name])
    if not template:
        raise UserError(
            f"no captions for dataset '{source.name}'. Fix: pass --captions "
            f"{source.name}=FILE (see rsfusion/data/captions.py) or --template-captions"
        )
    names, ignore = source.card.class_names, source.card.ignore_index
    return [
        template_caption(source.read(i)["mask"].numpy(), names, ignore, subject=source.subject)
        for i in range(len(source.ids))
    ]


class Triples(Dataset):
    """(RGB, X, modality, caption index) of every sample of the sources, resized to ``size``."""

    def __init__(self, sources: Sequence[Source], size: tuple[int, int]) -> None:
        self.sources, self.size = list(sources), size
        self.index = [(s, i) for s, src in enumerate(self.sources) for i in range(len(src.ids))]

    def __len__(self) -> int:
        return len(self.index)

    def _fit(self, image: Tensor) -> Tensor:
        """Resize to CLIP's size; 1 channel -> 3 (as :meth:`MACLIP.prepare`), so sources mix."""
        image = image.float()[None]
        image = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        return F.interpolate(image, self.size, mode="bilinear", antialias=True)[0]

    def __getitem__(self, n: int) -> dict[str, Any]:
        s, i = self.index[n]
        sample = self.sources[s].read(i)
        return {"image": self._fit(sample["image"]), "image_x": self._fit(sample["image_x"]),
                "modality": self.sources[s].modality, "n": n}  # fmt: skip


def parse_captions(items: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``DATASET=FILE`` arguments -> {dataset: file}, datasets checked against ``names``."""
    files = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise UserError(f"--captions {item!r}: expected DATASET=FILE, e.g. nyudepthv2=caps.tsv")
        if name not in names:
            raise UnknownNameError(
                f"--captions {item!r}: no dataset '{name}'; datasets: {list(names)}"
            )
        files[name] = path
    return files


def pretrain(
    cfg: ExperimentConfig,
    clip: str,
    out: str | Path,
    *,
    clip_model: str | None = None,
    captions: Sequence[str] = (),
    template: bool = False,
    epochs: int = 10,
    batch_size: int | None = None,
    lr: float = 1e-4,
    rank: int = 8,
    alpha: float = 8.0,
    max_samples: int | None = None,
    device: str = "auto",
) -> Path:
    """Pre-train MA-CLIP's pool on ``cfg``'s data (arguments as the CLI's); returns maclip.pt."""
    out = Path(out)
    batch_size = batch_size or cfg.data.batch_size
    if batch_size < 2 or epochs < 1:
        raise UserError(f"--batch-size {batch_size} / --epochs {epochs}: need >= 2 and >= 1")
    torch.manual_seed(cfg.seed)
    named = data_sources(cfg.data)
    files = parse_captions(captions, [name for name, _ in named])
    sources = [open_source(name, data, max_samples) for name, data in named]
    texts: list[str] = []
    for src in sources:
        caps = source_captions(src, files, template)
        if src.name not in files:
            write_captions(out / "captions" / f"{src.name}.tsv", dict(zip(src.ids, caps)))
        texts += caps
        print(f"{src.name}: {len(src.ids)} samples, X '{src.modality}' -> LoRA "
              f"'{pool_key(src.modality)}', captions {files.get(src.name, 'from labels')}")  # fmt: skip
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if device == "auto" else device)
    if str(clip) == RANDOM_TINY:  # the demo's stand-in: no CLIP weights can be had offline
        from rsfusion.models.maclip import build_clip, tiny_clip_config

        print(f"--clip {RANDOM_TINY}: a tiny RANDOMLY INITIALISED CLIP (demo only, no knowledge)")
        torch.manual_seed(0)
        clip_cfg = tiny_clip_config()
        clip_model_ = build_clip(clip_cfg).eval()
    else:
        clip_model_, clip_cfg = load_clip(clip, clip_model)
    model = MACLIP(clip_model_, clip_cfg, [s.modality for s in sources], rank, alpha).to(dev)
    data = Triples(sources, model.image_size)
    if len(data) < batch_size:
        raise UserError(f"{len(data)} samples, fewer than --batch-size {batch_size}: lower it")
    with torch.no_grad():
        unique = sorted(set(texts))
        emb = torch.cat(
            [model.encode_text(unique[i : i + 256]) for i in range(0, len(unique), 256)]
        )
        where = {t: k for k, t in enumerate(unique)}
        s_text = emb[torch.tensor([where[t] for t in texts])]
    trainable = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    print(f"MA-CLIP pool {list(model.modalities)}: {count:,} trainable LoRA parameters")
    opt = torch.optim.AdamW(trainable, lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen,
                        num_workers=cfg.data.num_workers)  # fmt: skip
    log: dict[str, Any] = {
        "config": cfg.name, "clip": str(clip), "pool": list(model.modalities),
        "trainable_parameters": count, "batch_size": batch_size, "lr": lr,
        "datasets": {s.name: {"card": s.card.name, "modality": s.modality, "samples": len(s.ids),
                              "captions": files.get(s.name, "template")} for s in sources},
        "epochs": [],
    }  # fmt: skip
    model.train()
    start = time.time()
    for epoch in range(1, epochs + 1):
        total, steps = 0.0, 0
        for batch in loader:
            s_r, s_m = model.encode(batch["image"].to(dev), batch["image_x"].to(dev),
                                    batch["modality"])  # fmt: skip
            loss = model.contrastive_loss(s_text[batch["n"]].to(dev), s_r, s_m)
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"MA-CLIP loss is {value} at epoch {epoch}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + value, steps + 1
        mean = total / steps
        log["epochs"].append({"epoch": epoch, "loss": mean, "steps": steps,
                              "seconds": round(time.time() - start, 2)})  # fmt: skip
        print(f"epoch {epoch}/{epochs}: loss {mean:.4f} ({steps} steps)")
        _write_json(out / "maclip_log.json", log)
    meta = {k: log[k] for k in ("config", "clip", "datasets", "batch_size", "lr")}
    meta["epochs"], meta["final_loss"] = epochs, log["epochs"][-1]["loss"]
    return model.cpu().save(out / "maclip.pt", meta)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_messages()
    try:
        cfg = load_config(args.cfg, args.set)
        path = pretrain(
            cfg, args.clip, args.out, clip_model=args.clip_model, captions=args.captions,
            template=args.template_captions, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, rank=args.rank, alpha=args.alpha, max_samples=args.max_samples,
            device=args.device,
        )  # fmt: skip
        print(f"MA-CLIP: {path}")
        return 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
