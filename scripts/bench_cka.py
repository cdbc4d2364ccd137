"""Benchmark cka_across: speed and memory against the bare forward passes, and accuracy and speed against
the peer tools torch-cka and pytorch-cka, in one run.

    make bench                      # ViT-Ti/16 vs ResNet-18, random init, 256 and 1024 images, batch 32, CPU
    python scripts/bench_cka.py --paper-scale   # layers=all of ViT-B/16 vs ResNet-50 (ours vs bare forward only)
    python scripts/bench_cka.py --grid          # cka_grid of 4 tiny models vs their bare forwards vs pairwise cka_across

Every measurement runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own. All tools see
the same images (vitstudy's synthetic set, generated lazily so the data set itself takes no memory) with one
preprocessing for both models, in the same batches, and compute the same quantity: minibatch unbiased linear
CKA over all tokens/positions, averaged over batches (Nguyen et al. 2021). The float64 reference casts each
batch's float32 features to float64 and evaluates the Song et al. formula written out (not vitstudy's code).
Printed ratios: wall time / wall time of the bare forward passes of both models over the same loader. Imports
happen before the clock starts (as a run imports its analysis before its analysis stage). First, the overhead lines:
vitstudy against the bare forwards in one process, in two designs (whole passes interleaved, and batch-paired with
an A/A control), medians over rounds, then the shares of the hooks' CKA work and of the layer probe
(docs/performance.md says why the batch-paired ratio is the one to read on a shared, noisy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def build(args):
    import timm
    import torch
    from torch.utils.data import DataLoader, Dataset

    from vitstudy.pipeline.data import SyntheticImages

    torch.manual_seed(0)
    m1 = timm.create_model(args.model1).eval()
    torch.manual_seed(1)
    m2 = (
        timm.create_model(args.model2, zero_init_last=False).eval()
        if "resnet" in args.model2
        else timm.create_model(args.model2).eval()
    )
    cfg = timm.data.resolve_model_data_config(m1)
    transform = timm.data.create_transform(**cfg)

    class Images(Dataset):
        def __init__(self, n):
            self.base, self.n = SyntheticImages(size=n, image_size=224, seed=0), n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            img, label = self.base[i]
            return transform(img), label

    loader = DataLoader(Images(args.images), batch_size=args.batch, shuffle=False, num_workers=0)
    return m1, m2, loader


def layer_names(model, spec):
    from vitstudy.pipeline.layers import resolve

    return [l.name for l in resolve(model, spec, (3, 224, 224))]


def worker(args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    m1, m2, loader = build(args)
    l1, l2 = layer_names(m1, args.layers), layer_names(m2, args.layers)
    out: dict = {"mode": args.mode, "images": args.images, "layers": [len(l1), len(l2)]}
    # every import before the clock: a run imports its analysis before its analysis stage (run.json timings_s)
    if args.mode == "vitstudy":
        from vitstudy import cka_matrix
    elif args.mode in ("torch-cka", "pytorch-cka"):
        sys.path.insert(0, HERE)
        from peer_cka import pytorch_cka_matrix, torch_cka_matrix

        try:  # the peer package itself, imported inside its wrapper
            __import__("torch_cka.cka" if args.mode == "torch-cka" else "cka")
        except ImportError:
            pass
    if args.mode == "overhead":
        out.update(overhead(args, m1, m2, loader, l1, l2))
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    t = time.perf_counter()
    if args.mode == "data":
        for _ in loader:
            pass
    elif args.mode == "bare":
        with torch.inference_mode():
            for x, _ in loader:
                m1(x), m2(x)
    elif args.mode == "vitstudy":
        df = cka_matrix(m1, loader, other=m2, layers=l1, other_layers=l2)
        out["matrix"] = df.pivot(index="index_x", columns="index_y", values="cka").to_numpy().tolist()
    elif args.mode == "torch-cka":
        out["matrix"] = torch_cka_matrix(m1, m2, loader, l1, l2).tolist()
    elif args.mode == "pytorch-cka":
        out["matrix"] = pytorch_cka_matrix(m1, m2, loader, l1, l2).tolist()
    elif args.mode == "reference":
        out["matrix"] = reference(m1, m2, loader, l1, l2).tolist()
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del np
    return out


class Paired:
    """The loader's batches, each also run through the bare forwards of both models and timed apart: just before the
    consumer takes it (even batches) or just after the consumer is done with it (odd batches), so that each side
    follows the other equally often. The consumer's own time is the whole minus the bare forwards and the loading.
    Pairing batch by batch cancels the drift of a shared machine, which moves whole passes by several percent."""

    def __init__(self, loader, bare_batch):
        self.loader, self.bare_batch = loader, bare_batch
        self.bare = self.load = 0.0

    def _bare(self, x) -> None:
        t = time.perf_counter()
        self.bare_batch(x)
        self.bare += time.perf_counter() - t

    def __iter__(self):
        batches, pending, k = iter(self.loader), None, 0
        while True:
            if pending is not None:
                self._bare(pending)
                pending = None
            t = time.perf_counter()
            batch = next(batches, None)
            self.load += time.perf_counter() - t
            if batch is None:
                return
            if k % 2 == 0:
                self._bare(batch[0])
            else:
                pending = batch[0]
            k += 1
            yield batch

    def ratio(self, consume) -> float:
        """consume(self)'s own time over the bare forwards' time on the same batches."""
        t = time.perf_counter()
        consume(self)
        return (time.perf_counter() - t - self.bare - self.load) / self.bare


def overhead(args, m1, m2, loader, l1, l2) -> dict:
    """vitstudy against the bare forwards in one process, two designs. Whole passes, interleaved: a warm-up of each,
    then `rounds` rounds of both in alternating order; per round the ratio of wall and of CPU time (all threads).
    Batch-paired (`Paired`): `rounds` runs of vitstudy with the bare forwards timed batch by batch next to it, and
    as a control the same design with the bare forwards in vitstudy's place (an A/A ratio, 1 up to noise). Medians
    over rounds are the results. Then where vitstudy's extra time goes: its hooks' CKA work (Gram products and Ũ)
    and the layer probe, each over the bare forwards."""
    import statistics

    import torch

    from vitstudy import cka_matrix
    from vitstudy.analyses import cka
    from vitstudy.pipeline.layers import resolve

    def bare_batch(x):
        with torch.inference_mode():
            m1(x), m2(x)

    def bare(batches=loader):
        for x, _ in batches:
            bare_batch(x)

    def ours(batches=loader):
        cka_matrix(m1, batches, other=m2, layers=l1, other_layers=l2)

    def timed(f):
        w, c = time.perf_counter(), time.process_time()
        f()
        return time.perf_counter() - w, time.process_time() - c

    timed(bare), timed(ours)  # warm-up: allocator, thread pools, first-call paths
    wall, cpu, seconds = [], [], []
    for r in range(args.rounds):
        order = (bare, ours) if r % 2 == 0 else (ours, bare)
        got = {f: timed(f) for f in order}
        wall.append(got[ours][0] / got[bare][0])
        cpu.append(got[ours][1] / got[bare][1])
        seconds.append((got[bare][0], got[ours][0]))
    paired, control = [], []
    for r in range(args.rounds):
        paired.append(Paired(loader, bare_batch).ratio(ours))
        control.append(Paired(loader, bare_batch).ratio(bare))
    # where the time goes: the reducer's hook work, timed in one more paired run, and the probe of both models
    spent = [0.0]
    on_tensor = cka.CKAReducer.on_tensor

    def hook_timed(self, *a):
        t = time.perf_counter()
        on_tensor(self, *a)
        spent[0] += time.perf_counter() - t

    cka.CKAReducer.on_tensor = hook_timed
    try:
        p = Paired(loader, bare_batch)
        p.ratio(ours)
    finally:
        cka.CKAReducer.on_tensor = on_tensor
    size = tuple(next(iter(loader))[0].shape[1:])
    t = time.perf_counter()
    resolve(m1, l1, size), resolve(m2, l2, size)
    probe = time.perf_counter() - t
    return {
        "wall_ratio": statistics.median(wall),
        "cpu_ratio": statistics.median(cpu),
        "wall_ratios": wall,
        "cpu_ratios": cpu,
        "seconds": statistics.median(o for _, o in seconds),
        "bare_seconds": statistics.median(b for b, _ in seconds),
        "paired_ratio": statistics.median(paired),
        "paired_ratios": paired,
        "control_ratio": statistics.median(control),
        "control_ratios": control,
        "hook_share": spent[0] / p.bare,
        "probe_share": probe / p.bare,
    }


def song_hsic(k, l):
    """Song et al. 2012, written out in float64 (batched over a leading layer axis of k and l)."""
    import torch

    n = k.shape[-1]
    eye = torch.eye(n, dtype=torch.bool)
    k = k.masked_fill(eye, 0)
    l = l.masked_fill(eye, 0)
    tr = torch.einsum("...ij,...ij->...", k, l)
    sk, sl = k.sum((-1, -2)), l.sum((-1, -2))
    cross = torch.einsum("...i,...i->...", k.sum(-1), l.sum(-1))
    return (tr + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def reference(m1, m2, loader, l1, l2):
    import torch

    feats: dict[str, torch.Tensor] = {}
    mods = {**{("a", n): m for n, m in m1.named_modules()}, **{("b", n): m for n, m in m2.named_modules()}}
    hooks = [
        mods[(s, n)].register_forward_hook(lambda m, a, o, key=(s, n): feats.__setitem__(key, o))
        for s, names in (("a", l1), ("b", l2))
        for n in names
    ]
    xy = torch.zeros(len(l1), len(l2), dtype=torch.float64)
    xx = torch.zeros(len(l1), dtype=torch.float64)
    yy = torch.zeros(len(l2), dtype=torch.float64)
    batches = 0
    with torch.inference_mode():
        for x, _ in loader:
            m1(x), m2(x)
            grams = {}
            for key, f in feats.items():
                f = f.reshape(len(f), -1).double()
                grams[key] = f @ f.T
            ka = torch.stack([grams[("a", n)] for n in l1])
            kb = torch.stack([grams[("b", n)] for n in l2])
            for i in range(len(l1)):
                xy[i] += song_hsic(ka[i].expand_as(kb), kb)
            xx += song_hsic(ka, ka)
            yy += song_hsic(kb, kb)
            batches += 1
    for h in hooks:
        h.remove()
    return xy / torch.sqrt(xx[:, None] * yy[None, :])


GRID_MODELS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "resnet18", "resnet10t"]


def grid_worker(args) -> dict:
    """One of: bare forwards of the M models, cka_grid, or cka_across over every pair (through the runner)."""
    import itertools

    import torch

    from vitstudy import compose
    from vitstudy.api import run as run_analysis
    from vitstudy.pipeline import data, models

    torch.set_num_threads(args.threads)
    common = [
        f"dataset.num_images={args.images}",
        f"dataset.batch_size={args.batch}",
        "cache.dir=",
        "progress=false",
        f"layers={args.layers}",
    ]
    out = {"mode": args.mode, "images": args.images}
    if args.mode == "grid-bare":
        cfg = compose(common)
        loaded = [
            models.load(compose([f"model.name={n}", "model.pretrained=false", *common]).model) for n in GRID_MODELS
        ]
        base = data.build_dataset(cfg.dataset)
        batching = data.make_batches(data.sample_indices(len(base), args.images, 0), args.batch)
        loader = data.loader(base, batching, [m.transform for m in loaded])
        t = time.perf_counter()
        with torch.inference_mode():
            for inputs, _ in loader:
                for m, x in zip(loaded, inputs):
                    m.module(x)
        out["seconds"] = time.perf_counter() - t
    elif args.mode == "grid":  # the analysis stage less model loading, as for the bare forwards
        run_analysis(
            ["analysis=cka_grid", f"analysis.models=[{','.join(GRID_MODELS)}]", "analysis.pretrained=false", *common],
            out_dir="/tmp/vitstudy-bench/grid",
        )
        t = json.load(open("/tmp/vitstudy-bench/grid/run.json"))["timings_s"]
        out["seconds"] = t["analysis"] - t["load_models"]
    else:  # pairwise cka_across: the sum of their analysis stages (models load outside it)
        out["seconds"] = 0.0
        for a, b in itertools.combinations(GRID_MODELS, 2):
            run_analysis(
                [
                    "analysis=cka_across",
                    f"model.name={a}",
                    f"reference.name={b}",
                    "model.pretrained=false",
                    "reference.pretrained=false",
                    *common,
                ],
                out_dir=f"/tmp/vitstudy-bench/{a}-{b}",
            )
            out["seconds"] += json.load(open(f"/tmp/vitstudy-bench/{a}-{b}/run.json"))["timings_s"]["analysis"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(mode, args, images) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--images",
        str(images),
        "--batch",
        str(args.batch),
        "--model1",
        args.model1,
        "--model2",
        args.model2,
        "--layers",
        args.layers,
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"mode": mode, "images": images, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--big", type=int, default=1024, help="image count for the memory check")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model1", default="vit_tiny_patch16_224")
    p.add_argument("--model2", default="resnet18")
    p.add_argument("--layers", default="blocks")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--peers", default="torch-cka,pytorch-cka")
    p.add_argument("--overhead", type=int, default=512, help="images for the interleaved vitstudy/bare ratio (0: skip)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the overhead measurement")
    p.add_argument("--only-overhead", action="store_true", help="run the overhead measurement (both designs) only")
    p.add_argument("--paper-scale", action="store_true", help="layers=all of ViT-B/16 vs ResNet-50; ours vs bare only")
    p.add_argument("--grid", action="store_true", help=f"cka_grid of {len(GRID_MODELS)} tiny models")
    args = p.parse_args()
    if args.worker:
        args.mode = args.worker
        print(json.dumps(grid_worker(args) if args.mode.startswith(("grid", "pairwise")) else worker(args)))
        return
    if args.grid:
        print(
            f"# cka_grid of {', '.join(GRID_MODELS)} (random init), {args.images} images, batch {args.batch}, "
            f"layers={args.layers}, {args.threads} threads; times: data loading + forwards + CKA, model loading excluded"
        )
        rows = {m: run(m, args, args.images) for m in ("grid-bare", "grid", "pairwise")}
        bare = rows["grid-bare"].get("seconds")
        for mode, r in rows.items():
            if "error" in r:
                print(f"{mode:<10} failed: {r['error']}")
            else:
                print(
                    f"{mode:<10} {r['seconds']:8.2f} s  {r['seconds'] / bare:6.3f}x the {len(GRID_MODELS)} bare forwards"
                )
        return
    if args.paper_scale:
        args.model1, args.model2, args.layers, args.peers, args.big = "vit_base_patch16_224", "resnet50", "all", "", 0
    peers = [x for x in args.peers.split(",") if x]
    print(
        f"# {args.model1} vs {args.model2}, layers={args.layers}, batch {args.batch}, {args.threads} threads, random init"
    )
    if args.overhead:
        report_overhead(run("overhead", args, args.overhead), args)
        if args.only_overhead:
            return
    rows = [run(m, args, args.images) for m in ["data", "bare", "vitstudy", *peers]]
    if not args.paper_scale:
        rows.append(run("reference", args, args.images))
    if args.big:
        rows += [run(m, args, args.big) for m in ["bare", "vitstudy", *peers]]
    report(rows, args)


def report_overhead(r, args):
    if "error" in r:
        print(f"overhead failed: {r['error']}")
        return

    def listed(xs):
        return ", ".join(f"{x:.3f}" for x in xs)

    rounds = ", ".join(f"{w:.3f}/{c:.3f}" for w, c in zip(r["wall_ratios"], r["cpu_ratios"]))
    print(
        f"vitstudy / bare forwards, {r['images']} images, one process, {args.rounds} rounds per design:\n"
        f"  whole passes, interleaved: wall {r['wall_ratio']:.3f}x, CPU {r['cpu_ratio']:.3f}x (median; per round "
        f"wall/CPU: {rounds}; bare {r['bare_seconds']:.1f} s, vitstudy {r['seconds']:.1f} s)\n"
        f"  batch-paired: {r['paired_ratio']:.3f}x (median; per round {listed(r['paired_ratios'])}); control, bare in "
        f"vitstudy's place: {r['control_ratio']:.3f}x ({listed(r['control_ratios'])}); over the control: "
        f"{r['paired_ratio'] / r['control_ratio']:.3f}x\n"
        f"  where vitstudy's time beyond the forwards goes: CKA in the hooks (Gram products, U-centring) "
        f"{r['hook_share']:.1%} of the bare forwards, layer probe (one batch-2 forward per model) {r['probe_share']:.1%}"
    )


def report(rows, args):
    import numpy as np

    def find(mode, n):
        return next((r for r in rows if r["mode"] == mode and r["images"] == n and "error" not in r), None)

    ref = find("reference", args.images)
    print(f"{'tool':<12} {'images':>6} {'seconds':>8} {'x bare':>7} {'peak MB':>8} {'max |diff| vs float64':>22}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<12} {r['images']:>6}  failed: {r['error']}")
            continue
        bare = find("bare", r["images"])
        ratio = r["seconds"] / bare["seconds"] if bare else float("nan")
        diff = ""
        if ref and "matrix" in r and r["mode"] != "reference" and r["images"] == ref["images"]:
            diff = f"{np.max(np.abs(np.array(r['matrix']) - np.array(ref['matrix']))):.2e}"
        print(
            f"{r['mode']:<12} {r['images']:>6} {r['seconds']:>8.2f} {ratio:>7.3f} {r['peak_rss_mb']:>8.0f} {diff:>22}"
        )
    ours_small, ours_big = find("vitstudy", args.images), find("vitstudy", args.big)
    if ours_small and ours_big:
        growth = ours_big["peak_rss_mb"] / ours_small["peak_rss_mb"] - 1
        print(f"vitstudy peak memory at {args.big} vs {args.images} images: {growth:+.1%}")


if __name__ == "__main__":
    main()
