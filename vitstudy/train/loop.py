"""Training from scratch, resumable: the models the analyses need but no one publishes weights for.

Raghu et al. 2021 train ViTs on less data (Figs 4, 12), without the skip connection of one block (Fig. 8)
and with GAP instead of CLS (Figs 10, 11); Park & Kim 2022 train ViT-Ti, PiT-Ti, Swin-Ti and ResNet-50 on
CIFAR-100 with one recipe (SCIENCE.md §3.1). The loop is built from timm's parts: `create_optimizer_v2`,
`create_scheduler_v2` (stepped per update), `Mixup`/CutMix with `SoftTargetCrossEntropy`, label smoothing,
RandAugment through `create_transform(is_training=True)`.

A run directory holds `train.csv` (one row per epoch), `learning_curve.png/.pdf`, `checkpoints/last.pt`
and `checkpoints/best.pt` and, written last, `run.json`. A checkpoint holds only tensors and plain
containers (loadable with `torch.load(weights_only=True)`): `state_dict`, `model_config` (timm name and
kwargs), optimizer, scheduler, grad scaler, the RNG states (torch, CUDA, numpy, Python), the epoch
history and the config. It is written to a temporary file and renamed into place, so a kill at any
moment leaves the previous complete checkpoint. Rerunning the same command resumes after the last
complete epoch; every random draw of an epoch comes from the restored RNG states and a per-epoch
sampler seed, so on CPU with `num_workers=0` the continued run is bitwise identical to an
uninterrupted one.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from ..zoo import cifar as cifar_models
from ..pipeline import data, models, preprocess, results
from ..pipeline.engine import resolve_device
from ..errors import VitstudyError

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "images_per_s", "wall_time_s"]
FORMAT = "vitstudy-train-1"
# settings that may differ between a run and its resumption (they do not change what is trained)
RESUME_FREE = ("resume", "device", "threads", "progress", "debug_kill", "dataset.root", "dataset.num_workers",
               "dataset.download", "dataset.batch_size")


# ---------------------------------------------------------------- data

class Transformed(Dataset):
    """`base[indices[i]]` with a transform applied to the image: item -> (tensor, label)."""

    def __init__(self, base: Dataset, indices, transform):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        return self.transform(img), label


def labels_of(ds: Dataset) -> np.ndarray:
    """Every label of a data set without decoding images where the data set allows it."""
    if isinstance(ds, data.ImageFiles):
        return np.array([label for _, label in ds.samples])
    if isinstance(ds, data.TorchvisionImages) and hasattr(ds.ds, "targets"):
        return np.asarray(ds.ds.targets)
    if isinstance(ds, data.SyntheticImages):  # the label is the first draw of image i's generator
        labels = np.array([int(np.random.default_rng([ds.seed, i]).integers(ds.num_classes)) for i in range(len(ds))])
        assert all(labels[i] == ds[i][1] for i in range(min(2, len(ds))))
        return labels
    return np.array([ds[i][1] for i in range(len(ds))])


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> list[int]:
    """A seeded class-balanced subset: round(fraction * n_c) (at least 1) random images of every class c."""
    if not 0 < fraction <= 1:
        raise VitstudyError(f"dataset.fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        chosen += rng.choice(members, size=k, replace=False).tolist()
    return sorted(chosen)


def split_datasets(cfg) -> tuple[Dataset, Dataset, list[str] | int]:
    """(train, validation, classes) for the config's data set."""
    d = cfg.dataset
    if d.name == "synthetic":
        train = data.SyntheticImages(d.size, d.image_size, d.num_classes, d.seed)
        val = data.SyntheticImages(d.val_images or max(d.size // 5, 1), d.image_size, d.num_classes, d.seed + 1)
        return train, val, train.classes
    if d.name == "imagefolder":
        root = d.root
        if not root or not os.path.isdir(root):
            raise VitstudyError(f"dataset root not found: {root!r}; set dataset.root=DIR holding {d.train_split}/ and {d.val_split}/ class folders")
        splits = []
        for split in (d.train_split, d.val_split):
            path = os.path.join(root, split)
            if not os.path.isdir(path) and split == d.val_split and os.path.isdir(os.path.join(root, "val")):
                path = os.path.join(root, "val")
            if not os.path.isdir(path):
                raise VitstudyError(f"training on an image folder needs {os.path.join(root, split)}/ with class subfolders "
                                    f"(set dataset.train_split / dataset.val_split to the folder names)")
            splits.append(data.ImageFiles(path))
        train, val = splits
        if not train.classes or train.classes != val.classes:
            raise VitstudyError(f"{root}: {d.train_split}/ and {d.val_split}/ must hold the same class subfolders")
        return train, val, train.classes
    if d.name in ("cifar10", "cifar100", "imagenette"):
        train = data.TorchvisionImages(d.name, d.root, "train", d.download)
        val = data.TorchvisionImages(d.name, d.root, "test", d.download)
        return train, val, train.classes
    raise VitstudyError(f"unknown dataset '{d.name}'; valid: synthetic, imagefolder, cifar10, cifar100, imagenette")


def train_transform(data_config: dict, recipe):
    """timm's training transform (RandAugment, flip, random erasing, normalisation); 'pad' crops as on CIFAR."""
    from timm.data import create_transform
    from torchvision import transforms as T

    size = tuple(data_config["input_size"][-2:])
    primary, secondary, final = create_transform(
        input_size=data_config["input_size"], is_training=True, hflip=recipe.hflip,
        color_jitter=recipe.color_jitter, auto_augment=recipe.auto_augment,
        interpolation=data_config.get("interpolation", "bicubic"), mean=data_config["mean"], std=data_config["std"],
        re_prob=recipe.reprob, separate=True)
    if recipe.crop == "pad":
        primary = T.Compose([T.Resize(size), T.RandomCrop(size, padding=recipe.crop_padding), T.RandomHorizontalFlip(recipe.hflip)])
    elif recipe.crop != "rrc":
        raise VitstudyError(f"recipe.crop must be 'pad' or 'rrc', got {recipe.crop!r}")
    return T.Compose([primary, secondary, final])


# ---------------------------------------------------------------- model

def model_config(cfg, num_classes: int) -> dict:
    """The timm name and architecture kwargs that rebuild the trained model (saved in checkpoints)."""
    m = cfg.model
    kwargs = {k: v for k, v in OmegaConf.to_container(m.kwargs or {}, resolve=True).items() if v is not None}
    for key in ("remove_skip", "global_pool", "class_token"):
        value = m.get(key)
        if value is not None:
            if key in kwargs and kwargs[key] != value:
                raise VitstudyError(f"model.{key}={value} contradicts model.kwargs.{key}={kwargs[key]}; set one of them")
            kwargs[key] = list(value) if key == "remove_skip" else value
    if kwargs.get("num_classes") not in (None, num_classes):
        print(f"vitstudy: note: model.kwargs.num_classes={kwargs['num_classes']} replaced by the data set's {num_classes} classes")
    kwargs["num_classes"] = num_classes
    kwargs.pop("drop_path_rate", None)
    return {"name": m.name, "label": m.get("label") or m.name, "kwargs": kwargs}


def build_model(mcfg: dict, checkpoint: str | None = None, drop_path: float = 0.0) -> torch.nn.Module:
    kwargs = dict(mcfg["kwargs"])
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = models.create(mcfg["name"], pretrained=False, checkpoint=checkpoint, **kwargs)
    except VitstudyError as err:
        raise VitstudyError(str(err).replace("cannot build timm model", "cannot build model").split(": VitstudyError: ")[-1]) from None
    return model


# ---------------------------------------------------------------- state

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
             "python_gauss": random.getstate()[2]}  # random.gauss caches its second value (RandAugment's mstd uses it)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: dict, kill_here: bool = False) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: never a partial `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        if kill_here:  # test hook: a kill after the data is written, before it is renamed into place
            os._exit(137)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise VitstudyError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0][:160]}; "
                            f"delete it or pass resume=false to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VitstudyError(f"{path} is not a vitstudy training checkpoint; pass resume=false to start over")
    return ckpt


def _flat(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_same_run(saved: dict, current: dict, ckpt_path: Path) -> None:
    a, b = _flat(saved), _flat(current)
    for key in sorted(set(a) | set(b)):
        if key in RESUME_FREE or key.startswith("model.layers"):
            continue
        if a.get(key) != b.get(key):
            raise VitstudyError(f"{ckpt_path} was trained with {key}={a.get(key)!r}, this command has {key}={b.get(key)!r}; "
                                f"rerun with the same settings to resume, pass resume=false to start over, or choose another hydra.run.dir")


# ---------------------------------------------------------------- loop

def check_config(cfg) -> None:
    r = cfg.recipe
    if not 0 < cfg.dataset.fraction <= 1:
        raise VitstudyError(f"dataset.fraction must be in (0, 1], got {cfg.dataset.fraction}")
    if r.epochs < 1 or r.warmup_epochs < 0:
        raise VitstudyError(f"recipe.epochs must be at least 1 and recipe.warmup_epochs at least 0, got {r.epochs}, {r.warmup_epochs}")
    if r.batch_size < 2:
        raise VitstudyError(f"recipe.batch_size must be at least 2, got {r.batch_size}")
    if not 0 <= r.smoothing < 1:
        raise VitstudyError(f"recipe.smoothing must be in [0, 1), got {r.smoothing}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise VitstudyError(f"amp must be auto, bf16, fp16 or off; got {cfg.amp!r}")
    if cfg.model.pretrained and not cfg.model.checkpoint:
        raise VitstudyError("vitstudy train starts from random weights (model.pretrained=false) or from model.checkpoint=PATH")


def _amp(cfg, device: torch.device):
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    if mode != "off" and device.type == "cpu" and mode == "fp16":
        raise VitstudyError("amp=fp16 needs CUDA; use amp=bf16 or amp=off on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    return mode, dtype


def evaluate(model, loader, device, dtype) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) on clean validation images."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x)
            loss_sum += torch.nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return loss_sum / n, correct / n


def curve_figure(df: pd.DataFrame, title: str):
    from ..plots import cka as plots  # noqa: F401  (Agg backend, theme)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(df.epoch, df.train_loss, marker="o", label="train (augmented)")
    ax1.plot(df.epoch, df.val_loss, marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2.plot(df.epoch, 100 * df.train_acc, marker="o", label="train (augmented)")
    ax2.plot(df.epoch, 100 * df.val_top1, marker="o", label="validation top-1")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax1, ax2):
        ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _kill_point(spec: str | None, kind: str) -> int | None:
    if spec and spec.startswith(kind + ":"):
        return int(spec.split(":", 1)[1])
    return None


def train(cfg, out_dir: str | Path, overrides: list[str] | None = None) -> str:
    """Train (or resume) the configured model; write the run directory. Returns a one-line summary."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    check_config(cfg)
    started = datetime.now(timezone.utc)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt = None
    if last_path.exists() and cfg.resume:  # checked before anything in the run directory is touched
        ckpt = load_checkpoint(last_path)
        check_same_run(ckpt["config"], config, last_path)
    results.clear_finished(out_dir, ["train.csv", "learning_curve.png", "learning_curve.pdf"])
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    amp_mode, amp_dtype = _amp(cfg, device)
    r = cfg.recipe

    # data
    seed_all(cfg.seed)
    train_base, val_base, classes = split_datasets(cfg)
    num_classes = len(classes)
    train_idx = balanced_subset(labels_of(train_base), cfg.dataset.fraction, cfg.dataset.fraction_seed)
    val_idx = list(range(len(val_base)))
    if cfg.dataset.val_images and cfg.dataset.name != "synthetic" and cfg.dataset.val_images < len(val_base):
        val_idx = sorted(np.random.default_rng(cfg.seed).choice(len(val_base), cfg.dataset.val_images, replace=False).tolist())
    if len(train_idx) < r.batch_size:
        raise VitstudyError(f"the training subset has {len(train_idx)} images, fewer than recipe.batch_size={r.batch_size}; "
                            f"use a smaller batch or a larger dataset.fraction")

    # model (weights drawn from the seeded RNG), optimiser, schedule
    mcfg = model_config(cfg, num_classes)
    seed_all(cfg.seed)
    model = build_model(mcfg, cfg.model.checkpoint, r.drop_path)
    user_data = OmegaConf.to_container(cfg.model.data, resolve=True) if cfg.model.get("data") is not None else {}
    saved = models.training_metadata(cfg.model.checkpoint) if cfg.model.checkpoint else None
    data_config, sources = preprocess.resolve(model, user_data, saved.get("data_config") if saved else None, mcfg["kwargs"])
    print("vitstudy: " + preprocess.line("model", mcfg["name"], data_config, sources, preprocess.transform(data_config),
                                         cfg.model.checkpoint, mcfg["name"]), flush=True)
    channels_last = cfg.channels_last if cfg.channels_last is not None else (device.type == "cuda" and not hasattr(model, "blocks"))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_ds = Transformed(train_base, train_idx, train_transform(data_config, r))
    val_ds = Transformed(val_base, val_idx, preprocess.transform(data_config))
    workers = cfg.dataset.num_workers
    pin = device.type == "cuda"
    val_loader = DataLoader(val_ds, batch_size=cfg.dataset.batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                            persistent_workers=workers > 0)
    steps_per_epoch = len(train_ds) // r.batch_size
    try:
        optimizer = create_optimizer_v2(model, opt=r.opt, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum)
    except (AssertionError, ValueError) as err:
        raise VitstudyError(f"recipe.opt={r.opt!r} is not a timm optimizer: {err}") from None
    sched_args = dict(sched=r.sched, num_epochs=r.epochs, warmup_epochs=r.warmup_epochs, warmup_lr=r.warmup_lr,
                      warmup_prefix=True, min_lr=r.min_lr, decay_rate=r.decay_rate, step_on_epochs=False,
                      updates_per_epoch=steps_per_epoch)
    if r.decay_milestones:
        sched_args["decay_milestones"] = list(r.decay_milestones)
    try:
        scheduler, total_epochs = create_scheduler_v2(optimizer, **sched_args)
    except (AssertionError, ValueError) as err:
        raise VitstudyError(f"recipe.sched={r.sched!r}: {err}") from None
    if scheduler is None:
        raise VitstudyError(f"recipe.sched={r.sched!r} gives no schedule; use constant, cosine, step or multistep")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_mode == "fp16")
    mixup = None
    if r.mixup > 0 or r.cutmix > 0:
        mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=r.mixup_prob, switch_prob=r.mixup_switch_prob,
                      label_smoothing=r.smoothing, num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    elif r.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=r.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    # resume
    history = {c: [] for c in COLUMNS}
    best = {"epoch": 0, "val_top1": -1.0}
    start_epoch, step, wall = 0, 0, 0.0
    resumed_from = None
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"]) if ckpt["scaler"] else None
        history, best = ckpt["history"], ckpt["best"]
        start_epoch, step, wall = ckpt["epoch"], ckpt["step"], ckpt["wall_time_s"]
        set_rng_state(ckpt["rng"])
        resumed_from = start_epoch
        print(f"vitstudy: resuming {out_dir} after epoch {start_epoch}/{total_epochs}", flush=True)
    elif ckpt_dir.exists():
        for p in (last_path, best_path):
            if p.exists():
                p.unlink()

    for leftover in ckpt_dir.glob(".*.tmp") if ckpt_dir.exists() else []:  # from a kill during a checkpoint write
        leftover.unlink()
    kill_step, kill_save = _kill_point(cfg.debug_kill, "step"), _kill_point(cfg.debug_kill, "save")
    for epoch in range(start_epoch, total_epochs):
        t_epoch = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(train_ds, batch_size=r.batch_size, shuffle=True, drop_last=True, generator=gen,
                            num_workers=workers, pin_memory=pin)
        loss_sum = correct = seen = 0.0
        t_train = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
                loss = criterion(out, target)
            if not torch.isfinite(loss):
                raise VitstudyError(f"the training loss became {loss.item()} at step {step} (epoch {epoch + 1}); lower recipe.lr or set recipe.clip_grad")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if r.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scheduler.step_update(num_updates=step)
            loss_sum += loss.item() * len(y)
            correct += (out.detach().argmax(1) == y).sum().item()
            seen += len(y)
            if kill_step is not None and step == kill_step:  # test hook: Ctrl-C in the middle of an epoch
                raise KeyboardInterrupt
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t_train
        val_loss, val_top1 = evaluate(model, val_loader, device, amp_dtype)
        wall += time.perf_counter() - t_epoch
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / seen,
               "train_acc": correct / seen, "val_loss": val_loss, "val_top1": val_top1,
               "images_per_s": seen / train_time, "wall_time_s": wall}
        for c in COLUMNS:
            history[c].append(float(row[c]) if c not in ("epoch", "step") else int(row[c]))
        is_best = val_top1 > best["val_top1"]
        if is_best:
            best = {"epoch": epoch + 1, "val_top1": val_top1}
        state = {"format": FORMAT, "epoch": epoch + 1, "step": step, "state_dict": model.state_dict(),
                 "model_config": mcfg, "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": rng_state(),
                 "history": history, "best": best, "config": config, "wall_time_s": wall}
        if is_best:  # best first: a kill between the two writes only repeats this epoch
            save_checkpoint(best_path, state)
        save_checkpoint(last_path, state, kill_here=kill_save == epoch + 1)
        results.write_csv(out_dir / "train.csv", pd.DataFrame(history, columns=COLUMNS))
        print(f"vitstudy: epoch {epoch + 1}/{total_epochs} step {step} lr {row['lr']:.3g} train loss {row['train_loss']:.4f} "
              f"acc {row['train_acc']:.3f} | val loss {val_loss:.4f} top-1 {val_top1:.4f} | {row['images_per_s']:.0f} img/s, "
              f"{wall:.0f} s", flush=True)

    df = pd.DataFrame(history, columns=COLUMNS)
    written = [out_dir / "train.csv"]
    results.write_csv(out_dir / "train.csv", df)
    written += results.write_figure(out_dir / "learning_curve", curve_figure(df, f"{mcfg['label']} · {cfg.recipe.name} · {cfg.dataset.name}"))
    final = df.iloc[-1].to_dict()
    record = {
        "command": "train", "status": "complete", "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(), "wall_time_s": round(wall, 3),
        "overrides": list(overrides or []), "config": config, "model_config": mcfg,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        "dataset": {"train": data.describe(train_base), "train_images": len(train_idx), "fraction": cfg.dataset.fraction,
                    "val_images": len(val_idx), "classes": list(classes)},
        "epochs": total_epochs, "steps": int(final["step"]), "steps_per_epoch": steps_per_epoch,
        "resumed_from_epoch": resumed_from, "amp": amp_mode, "channels_last": bool(channels_last),
        "final": {k: final[k] for k in ("train_loss", "train_acc", "val_loss", "val_top1")},
        "best": best, "checkpoints": {"last": str(last_path.resolve()), "best": str(best_path.resolve())},
        "seed": cfg.seed, "git_revision": results.git_revision(), "versions": results.versions(),
        **results.device_info(device),
        "outputs": [p.name for p in written] + ["checkpoints/last.pt", "checkpoints/best.pt", results.RECORD],
    }
    results.write_json(out_dir / results.RECORD, record)
    return (f"{mcfg['name']} {total_epochs} epochs, val top-1 {final['val_top1']:.4f} (best {best['val_top1']:.4f} at epoch "
            f"{best['epoch']}); outputs in {out_dir} (train.csv, learning_curve.png, checkpoints/best.pt, run.json)")


__all__ = ["train", "balanced_subset", "labels_of", "cifar_models"]
