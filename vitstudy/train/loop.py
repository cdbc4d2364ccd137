"""Training from scratch, resumable: the models the analyses need but no one publishes weights for.

Raghu et al. 2021 train ViTs on less data (Figs 4, 12), without the skip connection of one block (Fig. 8)
and with GAP instead of CLS (Figs 10, 11); Park & Kim 2022 train ViT-Ti, PiT-Ti, Swin-Ti and ResNet-50 on
CIFAR-100 with one recipe (docs/methods.md#training-recipes). The loop is built from timm's parts: `create_optimizer_v2`,
`create_scheduler_v2` (stepped per update), `Mixup`/CutMix with `SoftTargetCrossEntropy`, label smoothing,
RandAugment through `create_transform(is_training=True)`.

A run directory holds `train.csv` (one row per epoch), `learning_curve.png/.pdf`, `checkpoints/last.pt`
and `checkpoints/best.pt` (see `train.checkpoint`) and, written last, `run.json`. Rerunning the same command
resumes after the last complete epoch; every random draw of an epoch comes from the restored RNG states and a
per-epoch sampler seed, so on CPU with `num_workers=0` the continued run is bitwise identical to an uninterrupted
one. As timm's train.py: `train_one_epoch` and `validate`, with `train` setting up and keeping the state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from .. import runtime
from ..errors import VitstudyError
from ..pipeline import data, models, preprocess, results
from ..plots import training as plots_training
from .checkpoint import FORMAT, check_same_run, load_checkpoint, rng_state, save_checkpoint, seed_all, set_rng_state
from .data import Transformed, splits, train_transform

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "images_per_s", "wall_time_s"]


# ---------------------------------------------------------------- model and optimisation


def model_config(cfg, num_classes: int) -> dict:
    """The timm name and architecture kwargs that rebuild the trained model (saved in checkpoints)."""
    m = cfg.model
    kwargs = {k: v for k, v in OmegaConf.to_container(m.kwargs or {}, resolve=True).items() if v is not None}
    for key in ("remove_skip", "global_pool", "class_token"):
        value = m.get(key)
        if value is not None:
            if key in kwargs and kwargs[key] != value:
                raise VitstudyError(
                    f"model.{key}={value} contradicts model.kwargs.{key}={kwargs[key]}; set one of them"
                )
            kwargs[key] = list(value) if key == "remove_skip" else value
    if kwargs.get("num_classes") not in (None, num_classes):
        print(
            f"vitstudy: note: model.kwargs.num_classes={kwargs['num_classes']} replaced by the data set's {num_classes} classes"
        )
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
        raise VitstudyError(
            str(err).replace("cannot build timm model", "cannot build model").split(": VitstudyError: ")[-1]
        ) from None
    return model


@dataclass
class Optimisation:
    """What one update needs besides the model and the batch (timm's optimizer, scheduler, Mixup, losses)."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    epochs: int  # warm-up + main schedule
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    mixup: object = None
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    kill_step: int | None = None  # test hook: Ctrl-C after this update


def optimisation(
    model,
    r,
    steps_per_epoch: int,
    num_classes: int,
    device,
    amp_mode: str,
    amp_dtype,
    channels_last: bool,
    kill_step: int | None,
) -> Optimisation:
    """timm's optimizer, per-update scheduler, grad scaler, Mixup/CutMix and loss for the recipe `r`."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    try:
        optimizer = create_optimizer_v2(model, opt=r.opt, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum)
    except (AssertionError, ValueError) as err:
        raise VitstudyError(f"recipe.opt={r.opt!r} is not a timm optimizer: {err}") from None
    sched_args = dict(
        sched=r.sched,
        num_epochs=r.epochs,
        warmup_epochs=r.warmup_epochs,
        warmup_lr=r.warmup_lr,
        warmup_prefix=True,
        min_lr=r.min_lr,
        decay_rate=r.decay_rate,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
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
        mixup = Mixup(
            mixup_alpha=r.mixup,
            cutmix_alpha=r.cutmix,
            prob=r.mixup_prob,
            switch_prob=r.mixup_switch_prob,
            label_smoothing=r.smoothing,
            num_classes=num_classes,
        )
        criterion = SoftTargetCrossEntropy()
    elif r.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=r.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    return Optimisation(
        optimizer, scheduler, total_epochs, scaler, criterion, mixup, r.clip_grad, amp_dtype, channels_last, kill_step
    )


# ---------------------------------------------------------------- one epoch


def check_config(cfg) -> None:
    r = cfg.recipe
    if not 0 < cfg.dataset.fraction <= 1:
        raise VitstudyError(f"dataset.fraction must be in (0, 1], got {cfg.dataset.fraction}")
    if r.epochs < 1 or r.warmup_epochs < 0:
        raise VitstudyError(
            f"recipe.epochs must be at least 1 and recipe.warmup_epochs at least 0, got {r.epochs}, {r.warmup_epochs}"
        )
    if r.batch_size < 2:
        raise VitstudyError(f"recipe.batch_size must be at least 2, got {r.batch_size}")
    if not 0 <= r.smoothing < 1:
        raise VitstudyError(f"recipe.smoothing must be in [0, 1), got {r.smoothing}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise VitstudyError(f"amp must be auto, bf16, fp16 or off; got {cfg.amp!r}")
    if cfg.model.pretrained and not cfg.model.checkpoint:
        raise VitstudyError(
            "vitstudy train starts from random weights (model.pretrained=false) or from model.checkpoint=PATH"
        )


def _amp(cfg, device: torch.device):
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    if mode != "off" and device.type == "cpu" and mode == "fp16":
        raise VitstudyError("amp=fp16 needs CUDA; use amp=bf16 or amp=off on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    return mode, dtype


def train_one_epoch(model, loader, opt: Optimisation, device, step: int, epoch: int) -> tuple[float, float, int, int]:
    """One pass over the training loader: (summed loss, correct predictions, images, update count after it)."""
    model.train()
    loss_sum = correct = seen = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if opt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if opt.mixup is not None:
            x, target = opt.mixup(x, y)
        with torch.autocast(device.type, dtype=opt.amp_dtype or torch.float32, enabled=opt.amp_dtype is not None):
            out = model(x)
            loss = opt.criterion(out, target)
        if not torch.isfinite(loss):
            raise VitstudyError(
                f"the training loss became {loss.item()} at step {step} (epoch {epoch + 1}); lower recipe.lr or set recipe.clip_grad"
            )
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        if opt.clip_grad:
            opt.scaler.unscale_(opt.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_grad)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        step += 1
        opt.scheduler.step_update(num_updates=step)
        loss_sum += loss.item() * len(y)
        correct += (out.detach().argmax(1) == y).sum().item()
        seen += len(y)
        if opt.kill_step is not None and step == opt.kill_step:  # test hook: Ctrl-C in the middle of an epoch
            raise KeyboardInterrupt
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loss_sum, correct, int(seen), step


def validate(model, loader, device, dtype) -> tuple[float, float]:
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


def _kill_point(spec: str | None, kind: str) -> int | None:
    if spec and spec.startswith(kind + ":"):
        return int(spec.split(":", 1)[1])
    return None


# ---------------------------------------------------------------- the run


@dataclass
class History:
    """The epochs so far (train.csv's rows), the best one, the update count and the training wall time."""

    rows: dict = field(default_factory=lambda: {c: [] for c in COLUMNS})
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_top1": -1.0})
    epoch: int = 0
    step: int = 0
    wall: float = 0.0

    def add(self, row: dict) -> bool:
        """Append an epoch's row; True when it is the best so far (by validation top-1)."""
        for c in COLUMNS:
            self.rows[c].append(float(row[c]) if c not in ("epoch", "step") else int(row[c]))
        self.epoch, self.step = row["epoch"], row["step"]
        if row["val_top1"] > self.best["val_top1"]:
            self.best = {"epoch": row["epoch"], "val_top1": row["val_top1"]}
            return True
        return False

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def train(cfg, out_dir: str | Path, overrides: list[str] | None = None) -> str:
    """Train (or resume) the configured model; write the run directory. Returns a one-line summary."""
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
    device = runtime.resolve_device(cfg.device)
    amp_mode, amp_dtype = _amp(cfg, device)
    r = cfg.recipe

    seed_all(cfg.seed)
    train_base, val_base, classes, train_idx, val_idx = splits(cfg)
    mcfg = model_config(cfg, len(classes))
    seed_all(cfg.seed)  # the weights are drawn from the seeded RNG
    model = build_model(mcfg, cfg.model.checkpoint, r.drop_path)
    user_data = OmegaConf.to_container(cfg.model.data, resolve=True) if cfg.model.get("data") is not None else {}
    saved = models.training_metadata(cfg.model.checkpoint) if cfg.model.checkpoint else None
    data_config, sources = preprocess.resolve(
        model, user_data, saved.get("data_config") if saved else None, mcfg["kwargs"]
    )
    print(
        "vitstudy: "
        + preprocess.line(
            "model",
            mcfg["name"],
            data_config,
            sources,
            preprocess.transform(data_config),
            cfg.model.checkpoint,
            mcfg["name"],
        ),
        flush=True,
    )
    data_record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
    channels_last = (
        cfg.channels_last if cfg.channels_last is not None else (device.type == "cuda" and not hasattr(model, "blocks"))
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_ds = Transformed(train_base, train_idx, train_transform(data_config, r))
    val_ds = Transformed(val_base, val_idx, preprocess.transform(data_config))
    workers, pin = cfg.dataset.num_workers, device.type == "cuda"
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.dataset.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )
    steps_per_epoch = len(train_ds) // r.batch_size
    opt = optimisation(
        model,
        r,
        steps_per_epoch,
        len(classes),
        device,
        amp_mode,
        amp_dtype,
        channels_last,
        _kill_point(cfg.debug_kill, "step"),
    )

    history, resumed_from = History(), None
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        opt.optimizer.load_state_dict(ckpt["optimizer"])
        saved_epochs = ckpt["config"]["recipe"]["epochs"]
        if saved_epochs == r.epochs:
            opt.scheduler.load_state_dict(ckpt["scheduler"])
        else:  # timm's schedulers are functions of the update count: rebuilt for the new length, from this step on
            print(
                f"vitstudy: recipe.epochs changed from {saved_epochs} to {r.epochs} on resume; the learning-rate "
                f"schedule is recomputed for {r.epochs} epochs from epoch {ckpt['epoch']} (train.csv's lr column shows it)",
                flush=True,
            )
        opt.scaler.load_state_dict(ckpt["scaler"]) if ckpt["scaler"] else None
        history = History(ckpt["history"], ckpt["best"], ckpt["epoch"], ckpt["step"], ckpt["wall_time_s"])
        set_rng_state(ckpt["rng"])
        resumed_from = history.epoch
        print(f"vitstudy: resuming {out_dir} after epoch {history.epoch}/{opt.epochs}", flush=True)
    elif ckpt_dir.exists():
        for p in (last_path, best_path):
            if p.exists():
                p.unlink()
    for leftover in ckpt_dir.glob(".*.tmp*") if ckpt_dir.exists() else []:  # from a kill during a checkpoint write
        leftover.unlink()

    kill_save = _kill_point(cfg.debug_kill, "save")
    for epoch in range(history.epoch, opt.epochs):
        t_epoch = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(
            train_ds,
            batch_size=r.batch_size,
            shuffle=True,
            drop_last=True,
            generator=gen,
            num_workers=workers,
            pin_memory=pin,
        )
        t_train = time.perf_counter()
        loss_sum, correct, seen, step = train_one_epoch(model, loader, opt, device, history.step, epoch)
        train_time = time.perf_counter() - t_train
        val_loss, val_top1 = validate(model, val_loader, device, amp_dtype)
        history.wall += time.perf_counter() - t_epoch
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": opt.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val_loss,
            "val_top1": val_top1,
            "images_per_s": seen / train_time,
            "wall_time_s": history.wall,
        }
        is_best = history.add(row)
        state = {
            "format": FORMAT,
            "epoch": epoch + 1,
            "step": step,
            "state_dict": model.state_dict(),
            "model_config": mcfg,
            "data_config": data_record,
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler.is_enabled() else {},
            "rng": rng_state(),
            "history": history.rows,
            "best": history.best,
            "config": config,
            "wall_time_s": history.wall,
        }
        if is_best:  # best first: a kill between the two writes only repeats this epoch
            save_checkpoint(best_path, state)
        save_checkpoint(last_path, state, kill_here=kill_save == epoch + 1)
        results.write_csv(out_dir / "train.csv", history.frame())
        print(
            f"vitstudy: epoch {epoch + 1}/{opt.epochs} step {step} lr {row['lr']:.3g} train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f} | val loss {val_loss:.4f} top-1 {val_top1:.4f} | {row['images_per_s']:.0f} img/s, "
            f"{history.wall:.0f} s",
            flush=True,
        )

    df = history.frame()
    written = [out_dir / "train.csv"]
    results.write_csv(out_dir / "train.csv", df)
    written += results.write_figure(
        out_dir / "learning_curve",
        plots_training.learning_curve(df, f"{mcfg['label']} · {cfg.recipe.name} · {cfg.dataset.name}"),
    )
    final = df.iloc[-1].to_dict()
    record = {
        "command": "train",
        **runtime.record(
            started,
            history.wall,
            device,
            overrides,
            config,
            model_config=mcfg,
            parameters=sum(p.numel() for p in model.parameters()),
            data_config=data_record,
            dataset={
                "train": data.describe(train_base),
                "train_images": len(train_idx),
                "fraction": cfg.dataset.fraction,
                "val_images": len(val_idx),
                "classes": list(classes),
            },
            epochs=opt.epochs,
            steps=int(final["step"]),
            steps_per_epoch=steps_per_epoch,
            resumed_from_epoch=resumed_from,
            amp=amp_mode,
            channels_last=bool(channels_last),
            final={k: final[k] for k in ("train_loss", "train_acc", "val_loss", "val_top1")},
            best=history.best,
            checkpoints={"last": str(last_path.resolve()), "best": str(best_path.resolve())},
            seed=cfg.seed,
            outputs=[p.name for p in written] + ["checkpoints/last.pt", "checkpoints/best.pt", results.RECORD],
        ),
    }
    results.write_json(out_dir / results.RECORD, record)
    best = history.best
    return (
        f"{mcfg['name']} {opt.epochs} epochs, val top-1 {final['val_top1']:.4f} (best {best['val_top1']:.4f} at epoch "
        f"{best['epoch']}); outputs in {out_dir} (train.csv, learning_curve.png, checkpoints/best.pt, run.json)"
    )
