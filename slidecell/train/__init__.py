"""``slidecell train CONFIG``: train the built-in nucleus network from annotated sets.

Reproducible (seeded; the sample stream of step *k* depends only on the seed and *k*), logged
(``metrics.jsonl``, one line per epoch), resumable (``checkpoint.safetensors`` + ``checkpoint.json``
hold model, optimiser and progress after every epoch; a restarted run continues from there and
produces the same weights as an uninterrupted one). The best epoch by validation mSA is kept as
``model.safetensors`` with the resolved config beside it (``config.yaml``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field

from .. import schema
from ..errors import ConfigError
from ..schema import Strict, read_yaml


class SetSpec(Strict):
    #: folder under ``data_root``
    name: str
    #: regular expressions on index.csv columns choosing the training images
    train: dict[str, str] = Field(default_factory=dict)
    #: the same for validation images (never trained on); empty = none from this set
    val: dict[str, str] | None = None
    #: nominal µm/px for images without ``mpp``/``magnification`` in the index
    mpp: float | None = None
    #: relative sampling weight of this group
    weight: float = Field(1.0, gt=0)
    #: licence of the data (goes into the model card)
    license: str = "unknown"


class AugmentSpec(Strict):
    patch: int = Field(192, ge=32, le=1024)
    scale: tuple[float, float] = (0.5, 2.0)
    hed: float = Field(0.25, ge=0, le=1)
    blur: float = Field(0.2, ge=0, le=1)
    noise: float = Field(0.2, ge=0, le=1)
    jpeg: float = Field(0.2, ge=0, le=1)
    #: brightfield patches painted with tissue-marking ink (hard negatives)
    ink: float = Field(0.0, ge=0, le=1)


class TrainConfig(Strict):
    name: str
    description: str = ""
    research_only: bool = False
    seed: int = 0
    data_root: str = "../shared/data/nuclei"
    model_mpp: float = Field(0.5, gt=0)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256])
    sets: list[SetSpec]
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    #: weight of a soft Dice loss on the foreground map (counters the many background pixels)
    dice_weight: float = Field(0.0, ge=0)
    #: start from these weights (a model.safetensors of an earlier stage) instead of random ones
    init: str | None = None
    device: str = "auto"
    #: "auto" = bf16 autocast on CUDA, fp32 elsewhere; "bf16" also on the CPU (with channels-last
    #: memory: 2.4x faster per step on AVX512-BF16 cores, see benchmarks/RESULTS.md)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int = Field(0, ge=0)  # 0 = torch default


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    data = read_yaml(path, "training config") or {}
    data.update(overrides or {})
    cfg = schema.validate(TrainConfig, data, str(path), "training config")
    for s in cfg.sets:
        split = s.train.get("split")
        if split is not None and __import__("re").fullmatch(split, "test"):
            raise ConfigError(f"{path}: set {s.name!r} would train on its test split (train.split={split!r})")
    return cfg


def set_groups(cfg: TrainConfig, root: Path, which: str):
    from .data import Group, load_samples

    groups = []
    for s in cfg.sets:
        where = s.train if which == "train" else s.val
        if where is None:
            continue
        samples = load_samples(root, s.name, where, s.mpp, cfg.model_mpp)
        if which == "train" and not samples:
            raise ConfigError(f"set {s.name!r}: the train filter {s.train} selects no image")
        groups.append(Group(f"{s.name}:{which}", s.weight, samples))
    return groups


def validate(predictor, samples) -> dict:
    from ..metrics import SetScore

    score = SetScore()
    for s in samples:
        pred = predictor.labels(s.image[None])[0]
        score.add(s.labels, pred)
    return score.summary()


def train(config_path: str | Path, out: str | Path, data_root: str | Path | None = None,
          overrides: dict | None = None, log=print) -> Path:
    import torch

    from ..segment.builtin.model import ModelMeta, Predictor, save_weights
    from ..segment.models import pick_device
    from .data import Augment, sample_batch

    cfg = load_train_config(config_path, overrides)
    out = Path(out)
    root = _claim_out(cfg, out, data_root)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    train_groups, val_samples = _train_val(cfg, root)
    log(f"train: {sum(len(g.samples) for g in train_groups)} images in {len(train_groups)} groups; "
        f"val: {len(val_samples)} images; device {device}")
    spec, net = _network(cfg)
    amp = torch.bfloat16 if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda") else None
    net = net.to(device, memory_format=torch.channels_last if amp is not None else torch.contiguous_format)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.05)
    epoch0, best = _resume(out, net, opt, sched)
    aug = Augment(cfg.augment.patch, tuple(cfg.augment.scale), cfg.augment.hed, cfg.augment.blur,
                  cfg.augment.noise, cfg.augment.jpeg, cfg.augment.ink)
    meta_extra = {"research_only": cfg.research_only, "description": cfg.description, "init": cfg.init,
                  "training_sets": [{"name": s.name, "train": s.train, "license": s.license} for s in cfg.sets]}
    for epoch in range(epoch0, cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        losses = []
        for k in range(cfg.steps_per_epoch):
            step = epoch * cfg.steps_per_epoch + k
            rng = np.random.default_rng([cfg.seed, step])
            x, y = sample_batch(train_groups, aug, cfg.batch_size, rng)
            losses.append(_step(net, opt, sched, x, y, cfg, device, amp))
        t_train = time.perf_counter() - t0
        meta = ModelMeta(cfg.name, spec, cfg.model_mpp, extra=meta_extra)
        net.eval()
        val = validate(Predictor(net, meta, device=str(device)), val_samples) if val_samples else {}
        lm = np.mean(losses, axis=0)
        rec = {"epoch": epoch + 1, "step": (epoch + 1) * cfg.steps_per_epoch, "loss": float(lm[0]),
               "loss_fg": float(lm[1]), "loss_boundary": float(lm[2]), "loss_distance": float(lm[3]),
               "lr": float(sched.get_last_lr()[0]), "seconds": round(t_train, 1),
               **{f"val_{k}": v for k, v in val.items()}}
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log(json.dumps(rec))
        score = val.get("mSA", -float(lm[0]))
        if best is None or score > best:
            best = score
            meta.extra = {**meta_extra, "epoch": epoch + 1, "validation": val}
            save_weights(net, meta, out / "model.safetensors")
        _checkpoint(out, net, opt, sched, epoch + 1, best)
    return out / "model.safetensors"


def _claim_out(cfg: TrainConfig, out: Path, data_root) -> Path:
    """The training folder, refusing one that holds a run of another config; returns the data root."""
    out.mkdir(parents=True, exist_ok=True)
    root = Path(data_root or cfg.data_root)
    if not root.is_dir():
        raise ConfigError(f"data_root {root}: no such folder")
    resolved = cfg.model_dump(mode="json")
    cfg_file = out / "config.yaml"
    if cfg_file.exists():
        old = yaml.safe_load(cfg_file.read_text())
        if old != resolved:
            raise ConfigError(f"{out}: holds a run with a different config; use another --out")
    else:
        cfg_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return root


def _train_val(cfg: TrainConfig, root: Path):
    """The training groups and the validation images; none of these may be among those."""
    train_groups = set_groups(cfg, root, "train")
    val_samples = [s for g in set_groups(cfg, root, "val") for s in g.samples]
    train_keys = {s.key for g in train_groups for s in g.samples}
    leak = [s.key for s in val_samples if s.key in train_keys]
    if leak:
        raise ConfigError(f"validation images are also training images: {leak[:5]}")
    return train_groups, val_samples


def _network(cfg: TrainConfig):
    """The network's spec and the network, from ``init``'s weights when given."""
    from ..segment.builtin.net import NetSpec, UNet

    spec = NetSpec(3, tuple(cfg.channels), 3)
    net = UNet(spec)
    if cfg.init:
        from ..segment.builtin.model import load_weights

        init_net, init_meta = load_weights(cfg.init)
        if init_meta.spec != spec:
            raise ConfigError(f"init {cfg.init}: network {init_meta.spec} differs from channels {cfg.channels}")
        net.load_state_dict(init_net.state_dict())
    return spec, net


def maps_loss(logits, y, cfg: TrainConfig):
    """The loss of the three maps (channels 0-2 of ``logits`` and ``y``): weighted BCE of the
    foreground and the boundary ring, MSE of the distance, and the foreground's Dice; returns
    (loss, foreground, boundary, distance) tensors."""
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    w = torch.tensor(cfg.loss_weights, device=logits.device)
    l_fg = bce(logits[:, 0], y[:, 0])
    l_ring = bce(logits[:, 1], y[:, 1])
    l_dist = torch.nn.functional.mse_loss(torch.sigmoid(logits[:, 2]), y[:, 2])
    loss = w[0] * l_fg + w[1] * l_ring + w[2] * l_dist
    if cfg.dice_weight:
        pf = torch.sigmoid(logits[:, 0])
        inter = (pf * y[:, 0]).sum()
        loss = loss + cfg.dice_weight * (1 - (2 * inter + 1) / (pf.sum() + y[:, 0].sum() + 1))
    return loss, l_fg, l_ring, l_dist


def _step(net, opt, sched, x, y, cfg: TrainConfig, device, amp) -> list[float]:
    """One optimisation step on a batch; returns [loss, foreground, boundary, distance] losses."""
    import torch

    x = torch.from_numpy(x).to(device)
    if amp is not None:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y).to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = net(x)
    loss, l_fg, l_ring, l_dist = maps_loss(logits.float(), y, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return [loss.item(), l_fg.item(), l_ring.item(), l_dist.item()]


def _checkpoint(out: Path, net, opt, sched, epoch: int, best) -> None:
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    scalars = {"param_groups": opt_state["param_groups"], "scheduler": sched.state_dict(),
               "epoch": epoch, "best": best, "state_scalars": {}}
    for pid, st in opt_state["state"].items():
        for key, val in st.items():
            if hasattr(val, "shape") and val.ndim > 0:
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars["state_scalars"][f"{pid}.{key}"] = float(val)
    with atomic_path(out / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(out / "checkpoint.json") as tmp:
        Path(tmp).write_text(json.dumps(scalars, default=float))


def _resume(out: Path, net, opt, sched):
    import torch
    from safetensors.torch import load_file

    js, st = out / "checkpoint.json", out / "checkpoint.safetensors"
    if not (js.exists() and st.exists()):
        return 0, None
    scalars = json.loads(js.read_text())
    tensors = load_file(str(st))
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in scalars["state_scalars"].items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = torch.tensor(v)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
    sched.load_state_dict(scalars["scheduler"])
    return int(scalars["epoch"]), scalars["best"]
