"""Linear probes per layer (Raghu et al. 2021, Figs 11, 13; App. A and F): closed-form ridge regression to
{-1, 1} one-hot targets (metrics.ridge) on a train split, the ridge strength chosen on a validation split
from a small grid, accuracy on a held-out test split.

Representations of a layer: `cls` (token 0 of a CLS model), `gap` (mean of the patch tokens / of a CNN
map's positions), `gap_all` (mean of all tokens, CLS included: the paper's "CLS; GAP"), `first` (token 0:
the first patch token of a GAP model), `tokens` (one probe per token position, accuracy averaged over
positions, prefix tokens excluded; CNN maps are average-pooled to the last layer's grid first, as the paper
pools to the final stage's size; its extra patch-flattening, "a very minor gain", is not done).
Only XᵀX and XᵀY per probe are kept (float64), so memory does not grow with the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..anatomy import tokens as anatomy_tokens
from ..errors import VitstudyError
from ..metrics import uncertainty
from ..metrics.ridge import RidgeAccumulator
from ..pipeline import data
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer
from ..plots import probe as plots_probe
from ._registry import Params, Result, at_least, choice, register

REPRESENTATIONS = ("cls", "gap", "gap_all", "first", "tokens")


@dataclass
class LinearProbe(Params):
    representations: Any = "auto"  # auto (CLS ViT: cls gap gap_all tokens; GAP ViT: first gap tokens; CNN: gap tokens) or a list of cls, gap, gap_all, first, tokens
    shots: Optional[int] = None  # k images per class for training (the paper: 10); null = num_train images
    num_train: int = 1024  # train images when shots is null
    num_val: int = 256  # validation images (ridge strength chosen on them)
    num_test: int = 512  # held-out test images (accuracy reported)
    splits: str = "sample"  # sample: disjoint random train/val/test from the data set; paper: CIFAR train[:45000] / train[45000:] / test split
    alphas: List[float] = field(
        default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    )  # ridge grid, relative: lambda = alpha * trace(C) / D
    max_tokens: Optional[int] = (
        16  # per-token probes on at most this many evenly spaced positions (null = all; memory ~ tokens x D^2 x 8 bytes per layer)
    )

    def check(self) -> None:
        choice("splits", self.splits, ("sample", "paper"))
        at_least("shots", self.shots, 1, allow_none=True)
        at_least("max_tokens", self.max_tokens, 1, allow_none=True)
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise VitstudyError(
                f"analysis.alphas must be a non-empty list of positive ridge strengths, got {list(self.alphas)}"
            )


def few_shot(ds, pool: np.ndarray, shots: int, num_classes: int) -> list[int]:
    """The first `shots` images of each class in the (already shuffled) pool."""
    chosen: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    start, step = 0, max(64, 2 * shots * num_classes)  # growing chunks: labels may need decoding images
    while start < len(pool):
        part = pool[start : start + step]
        start, step = start + step, min(2 * step, 8192)
        for i, y in zip(part, data.labels(ds, part)):
            if 0 <= y < num_classes and len(chosen[int(y)]) < shots:
                chosen[int(y)].append(int(i))
        if all(len(v) == shots for v in chosen.values()):
            break
    short = [c for c, v in chosen.items() if len(v) < shots]
    if short:
        raise VitstudyError(
            f"analysis.shots={shots}: classes {short[:5]} have fewer images in the train pool; lower shots"
        )
    return [i for c in range(num_classes) for i in chosen[c]]


def make_splits(ctx, p) -> tuple[dict[str, tuple[object, list[int]]], int]:
    """{'train'|'val'|'test': (data set, indices)} and the number of classes."""
    cfg, rng = ctx.cfg, np.random.default_rng(ctx.cfg.seed)
    if p.splits == "paper":
        if cfg.dataset.name not in ("cifar10", "cifar100"):
            raise VitstudyError(
                f"analysis.splits=paper is the CIFAR split (first 45,000 train / last 5,000 val); "
                f"dataset is {cfg.dataset.name}: use dataset=cifar10 or cifar100, or analysis.splits=sample"
            )
        train_ds, test_ds = data.build_dataset(cfg.dataset, "train"), data.build_dataset(cfg.dataset, "test")
        n = len(train_ds)
        train_pool, val_pool = rng.permutation(n - 5000), (n - 5000) + rng.permutation(5000)
        test_pool = rng.permutation(len(test_ds))
    elif p.splits == "sample":
        train_ds = test_ds = ctx.dataset
        perm = rng.permutation(len(ctx.dataset))
        val_pool, test_pool = perm[: p.num_val], perm[p.num_val : p.num_val + p.num_test]
        train_pool = perm[p.num_val + p.num_test :]
    else:
        raise VitstudyError(f"analysis.splits must be sample or paper, got {p.splits!r}")
    classes = getattr(train_ds, "classes", []) or []
    num_classes = len(classes) or int(data.labels(train_ds, train_pool[:2048]).max()) + 1
    if num_classes < 2:
        raise VitstudyError(
            "linear_probe needs labelled images in at least 2 classes (a flat image folder has no labels)"
        )
    for name, size, pool in (("num_val", p.num_val, val_pool), ("num_test", p.num_test, test_pool)):
        if not 1 <= size <= len(pool):
            raise VitstudyError(f"analysis.{name}={size}: choose between 1 and {len(pool)}")
    if p.shots is not None:
        if int(p.shots) < 1:
            raise VitstudyError(f"analysis.shots must be at least 1 (or null for num_train images), got {p.shots}")
        train = few_shot(train_ds, train_pool, int(p.shots), num_classes)
    else:
        if not 1 <= p.num_train <= len(train_pool):
            raise VitstudyError(f"analysis.num_train={p.num_train}: the train pool holds {len(train_pool)} images")
        train = train_pool[: p.num_train].tolist()
    return {
        "train": (train_ds, train),
        "val": (train_ds, val_pool[: p.num_val].tolist()),
        "test": (test_ds, test_pool[: p.num_test].tolist()),
    }, num_classes


class Extractor:
    """Layer tensor -> {representation: (n, P, D)} for one model."""

    def __init__(self, module, layers: list[Layer], reps: list[str], max_tokens: int | None):
        self.module, self.has_cls = module, anatomy_tokens.has_cls(module)
        self.reps, self.max_tokens = reps, max_tokens
        maps = [l for l in layers if l.layout in ("NCHW", "NHWC")]
        last = maps[-1] if maps else None
        self.grid = None if last is None else (last.shape[1:3] if last.layout == "NCHW" else last.shape[0:2])

    def positions(self, count: int) -> np.ndarray:
        if self.max_tokens is None or count <= self.max_tokens:
            return np.arange(count)
        return np.unique(np.linspace(0, count - 1, self.max_tokens).round().astype(int))

    def __call__(self, layer: Layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if layer.layout == "NC":
            return {r: x[:, None].clone() for r in self.reps if r in ("gap",)}
        if layer.layout in ("NCHW", "NHWC"):
            x = x if layer.layout == "NCHW" else x.permute(0, 3, 1, 2)
            out = {}
            if "gap" in self.reps:
                out["gap"] = x.mean((2, 3))[:, None]
            if "tokens" in self.reps:
                t = F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)
                out["tokens"] = t[:, self.positions(t.shape[1])]
            return out
        prefix = anatomy_tokens.prefix_of(self.module, layer, x.shape[1])  # this layer's own: ConViT's CLS joins late
        out = {}
        for r in self.reps:
            if r == "cls":
                if self.has_cls and prefix:  # a layer before the class token joins has no 'cls' probe
                    out[r] = x[:, :1].clone()
            elif r == "gap":
                out[r] = x[:, prefix:].mean(1, keepdim=True)
            elif r == "gap_all":
                out[r] = x.mean(1, keepdim=True)
            elif r == "first":
                out[r] = (x[:, prefix : prefix + 1] if not self.has_cls else x[:, :1]).clone()
            else:
                out[r] = x[:, prefix:][:, self.positions(x.shape[1] - prefix)]
        return out


class TrainReducer(Reducer):
    def __init__(self, extract: Extractor, num_classes: int, device):
        self.extract, self.num_classes, self.device = extract, num_classes, device
        self.acc: dict[tuple[str, str], RidgeAccumulator] = {}
        self.cur: dict[tuple[str, str], torch.Tensor] = {}

    def on_tensor(self, model_index, layer, tensor):
        for rep, feats in self.extract(layer, tensor).items():
            self.cur[(layer.name, rep)] = feats

    def end_batch(self, labels, outputs):
        for key, feats in self.cur.items():
            if key not in self.acc:
                self.acc[key] = RidgeAccumulator(feats.shape[1], feats.shape[2], self.num_classes, self.device)
            self.acc[key].update(feats, labels.to(feats.device))
        self.cur = {}


class EvalReducer(Reducer):
    """Correct predictions per (layer, representation), alpha and token; with `chosen` (the alpha of each token's
    probe), also Σ and Σ² over images of each image's share of tokens right (the token average's SE over images)."""

    def __init__(self, extract: Extractor, solutions: dict, chosen: dict | None = None):
        self.extract, self.solutions, self.chosen = extract, solutions, chosen or {}
        self.correct: dict[tuple[str, str], torch.Tensor] = {}
        self.image_sums: dict[tuple[str, str], list[float]] = {}
        self.cur: dict = {}
        self.seen = 0

    def on_tensor(self, model_index, layer, tensor):
        for rep, feats in self.extract(layer, tensor).items():
            self.cur[(layer.name, rep)] = self.solutions[(layer.name, rep)].predict(feats)  # (A, n, P)

    def end_batch(self, labels, outputs):
        for key, pred in self.cur.items():
            right = pred == labels.to(pred.device)[None, :, None]  # (A, n, P)
            hits = right.sum(1).double().cpu()  # (A, P)
            self.correct[key] = self.correct.get(key, 0) + hits
            if key in self.chosen:
                best = self.chosen[key].to(pred.device)
                share = right[best, :, torch.arange(right.shape[2], device=pred.device)].double().mean(0)  # (n,)
                s1, s2 = self.image_sums.get(key, (0.0, 0.0))
                self.image_sums[key] = (s1 + float(share.sum()), s2 + float((share * share).sum()))
        self.seen += len(labels)
        self.cur = {}


def choose_reps(module, layers: list[Layer], spec) -> list[str]:
    has_cls = anatomy_tokens.has_cls(module)
    tokens = any(l.layout == "NLC" for l in layers)
    if spec == "auto":
        if not tokens:
            return ["gap", "tokens"]
        return ["cls", "gap", "gap_all", "tokens"] if has_cls else ["first", "gap", "tokens"]
    reps = [spec] if isinstance(spec, str) else list(spec)
    for r in reps:
        if r not in REPRESENTATIONS:
            raise VitstudyError(
                f"analysis.representations: unknown '{r}'; valid: auto or a list of {', '.join(REPRESENTATIONS)}"
            )
        if r == "cls" and not has_cls:
            raise VitstudyError(
                f"representation 'cls' needs a CLS token; {type(module).__name__} has none (use first or gap)"
            )
        if r in ("cls", "gap_all", "first") and not tokens:
            raise VitstudyError(f"representation '{r}' needs token outputs; a CNN's layers give gap and tokens")
    return reps


@register(
    "linear_probe",
    "closed-form ridge linear probes per layer on CLS / GAP / first / per-token representations "
    "(Raghu et al. 2021, Figs 11, 13)",
    LinearProbe,
)
def linear_probe(ctx) -> Result:
    cfg = ctx.cfg
    p = ctx.params
    m = ctx.models["model"]
    layers = ctx.layers(m)
    reps = choose_reps(m.module, layers, p.representations)
    splits, num_classes = make_splits(ctx, p)
    extract = Extractor(m.module, layers, reps, p.max_tokens)
    alphas = [float(a) for a in p.alphas]

    def loader(split):
        ds, idx = splits[split]
        batching = (
            data.make_batches(idx, cfg.dataset.batch_size, "fold")
            if len(idx) >= data.MIN_BATCH
            else data.Batching([list(idx)], "none", 0)
        )
        return data.loader(ds, batching, [m.transform], cfg.dataset.num_workers), batching

    train_loader, _ = loader("train")
    train = TrainReducer(extract, num_classes, ctx.device)
    stream([m], [layers], train_loader, train, ctx.device, "linear_probe train", ctx.progress)
    solutions = {k: acc.solve(alphas) for k, acc in train.acc.items()}
    train.acc.clear()
    scores, chosen, image_sums = {}, None, {}
    for split in ("val", "test"):
        ev = EvalReducer(extract, solutions, chosen)
        stream([m], [layers], loader(split)[0], ev, ctx.device, f"linear_probe {split}", ctx.progress)
        scores[split] = {k: v / ev.seen for k, v in ev.correct.items()}
        chosen = {k: v.argmax(0) for k, v in scores["val"].items()}  # the probe of each token: its best alpha on val
        image_sums = ev.image_sums
    used = [
        {
            "repeat": i,
            "split": s,
            "seed": cfg.seed,
            "images": len(splits[s][1]),
            "batches": None,
            "tail": "none",
            "dropped": 0,
            "indices": splits[s][1],
        }
        for i, s in enumerate(("train", "val", "test"))
    ]
    rows = []
    index = {l.name: i for i, l in enumerate(layers)}
    depth_den = max(len(layers) - 1, 1)
    settings = {
        "shots": p.shots,
        "num_train": len(splits["train"][1]),
        "num_val": len(splits["val"][1]),
        "num_test": len(splits["test"][1]),
        "num_classes": num_classes,
        "splits": p.splits,
        "dataset": cfg.dataset.name,
        "target": "{-1,1} one-hot, closed-form ridge",
    }
    for (lname, rep), val in scores["val"].items():
        test = scores["test"][(lname, rep)]
        best = val.argmax(0)  # per probe (token): the alpha with the best validation accuracy
        pos = extract.positions(val.shape[1]) if rep == "tokens" else [None]
        base = {
            "model": m.name,
            "label": m.label,
            "weights": m.weights,
            "layer": lname,
            "index": index[lname],
            "depth": index[lname] / depth_den,
            "representation": rep,
        }
        accs, vals = [], []
        n_test = settings["num_test"]
        for j in range(val.shape[1]):
            a = int(best[j])
            accs.append(float(test[a, j]))
            vals.append(float(val[a, j]))
            if rep == "tokens":
                ci = uncertainty.proportion_columns("accuracy", round(accs[-1] * n_test), n_test)
                rows.append(
                    {
                        **base,
                        "token": int(pos[j]) if len(pos) > j else j,
                        "accuracy": accs[-1],
                        **{k: float(v) for k, v in ci.items()},
                        "val_accuracy": vals[-1],
                        "alpha": alphas[a],
                        **settings,
                        "uncertainty": "wilson",
                    }
                )
        acc = float(np.mean(accs))
        if val.shape[1] == 1:  # one probe: a binomial proportion over the test images
            ci, method = uncertainty.proportion_columns("accuracy", round(acc * n_test), n_test), "wilson"
        else:  # the mean over token probes: each image's share of tokens right, SE over images
            s1, s2 = image_sums[(lname, rep)]
            _, se = uncertainty.mean_se(s1, s2, n_test)
            ci, method = uncertainty.se_columns("accuracy", acc, se, n_test - 1), "se_images"
        rows.append(
            {
                **base,
                "token": np.nan,
                "accuracy": acc,
                **{k: float(v) for k, v in ci.items()},
                "val_accuracy": float(np.mean(vals)),
                "alpha": alphas[int(best[0])] if val.shape[1] == 1 else np.nan,
                **settings,
                "uncertainty": method,
            }
        )
    df = pd.DataFrame(rows)
    shots = f"{p.shots}-shot" if p.shots else f"{settings['num_train']} train images"
    fig = plots_probe.probe_figure(df, f"{m.label}: linear probes ({shots}, {num_classes} classes)")
    info = {
        "representations": reps,
        "alphas": alphas,
        "ridge": "lambda = alpha * trace(C) / D, C the centred train covariance",
        "max_tokens": p.max_tokens,
        "uncertainty": {
            "linear_probe": {
                "one probe": uncertainty.METHODS["wilson"],
                "mean over token probes": uncertainty.METHODS["se_images"]
                + " (each image's share of token probes right)",
            }
        },
        "splits": {s: len(v[1]) for s, v in splits.items()},
    }
    return Result(tables={"linear_probe": df}, figures={"linear_probe": fig}, info=info, images=used)
