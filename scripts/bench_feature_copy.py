"""What the feature cache's copy of each captured tensor costs (cache.features=true only; nothing is copied otherwise).

A forward with every layer tapped whose hook keeps nothing, keeps the live tensor (the old, wrong behaviour: a later
in-place op changed it) or keeps a copy (the engine now); then the cache's own write of the batch for scale.
Random-init timm model, random images, one thread, median of 7 interleaved batches after one warm-up.

    .venv/bin/python scripts/bench_feature_copy.py resnet18 224 16
"""

import statistics
import sys
import tempfile
import time

import timm
import torch

from vitstudy.pipeline.features import FeatureCache
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.taps import tap

torch.set_num_threads(1)
name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = timm.create_model(name).eval()
layers = resolve(net, "all", (3, size, size))
x = torch.randn(batch, 3, size, size)
keep = {
    "none": lambda t: None,
    "live (old)": lambda t: t.detach().float().cpu(),
    "copy (new)": lambda t: t.detach().to("cpu", torch.float32, copy=True),
}
times = {k: [] for k in keep}
for rep in range(8):  # interleaved: the machine's load drifts
    for label, f in keep.items():
        store = {}
        with torch.inference_mode(), tap(net, layers, lambda l, t: store.__setitem__(l.name, f(t))):
            t0 = time.perf_counter()
            net(x)
            times[label].append(time.perf_counter() - t0)
        if label == "copy (new)":
            mb = sum(t.numel() * 4 for t in store.values()) / 1e6
res = {k: statistics.median(v[1:]) for k, v in times.items()}
print(
    f"{name} {size}px batch {batch}, {len(layers)} layers ({mb:.0f} MB captured per batch):",
    ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.items()),
    f"-> copy/none {res['copy (new)'] / res['none']:.3f}x",
)
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    FeatureCache(d).put("ns", list(range(batch)), store)
    put = time.perf_counter() - t0
print(f"  and the cache's own write of that batch (FeatureCache.put): {put * 1000:.0f} ms")
