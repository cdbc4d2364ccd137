"""Issue 20 items 1, 2 and 7: what the feature cache and the result cache serve, and bad devices.

Every number is held against features computed by hand (module by module, no hooks) and CKA written out in
float64 numpy (tests/helpers), never against the engine's own output.
"""

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf

from helpers import minibatch_reference
from vitstudy.analyses.cka import CKAReducer
from vitstudy.pipeline.engine import FeatureSource, stream
from vitstudy.pipeline.features import FeatureCache
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel

LAYERS = ["layer1.0.bn1", "layer1.0.bn2", "layer1.0", "layer1.1.act1:in", "layer2.0"]
BATCHES = [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
DATASET = OmegaConf.create({"name": "synthetic", "size": 24, "image_size": 32})


@pytest.fixture(scope="module")
def resnet():
    """ResNet-18 with nonzero last BN (zero_init_last=false): its blocks' in-place ReLU and `x += shortcut` matter."""
    torch.manual_seed(1)
    net = timm.create_model("resnet18", zero_init_last=False).eval()
    return LoadedModel(
        key="model",
        name="resnet18",
        label="resnet18",
        module=net,
        transform=None,
        data_config={"input_size": (3, 32, 32)},
        weights="random-init",
    )


@pytest.fixture(scope="module")
def pictures():
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def by_hand(net, x) -> dict[str, torch.Tensor]:
    """The listed layers' outputs module by module (no hooks; every intermediate kept)."""
    with torch.no_grad():
        s = net.maxpool(torch.relu(net.bn1(net.conv1(x))))
        b = net.layer1[0]
        bn1 = b.bn1(b.conv1(s))
        bn2 = b.bn2(b.conv2(torch.relu(bn1)))
        out0 = torch.relu(bn2 + s)
        b1 = net.layer1[1]
        in_act1 = b1.bn1(b1.conv1(out0))
        out1 = torch.relu(b1.bn2(b1.conv2(torch.relu(in_act1))) + out0)
        return {
            "layer1.0.bn1": bn1,
            "layer1.0.bn2": bn2,
            "layer1.0": out0,
            "layer1.1.act1:in": in_act1,
            "layer2.0": net.layer2[0](out1),
        }


def loader(pictures, models=1):
    return [([pictures[idx]] * models, torch.zeros(len(idx), dtype=torch.long)) for idx in BATCHES]


def run(m, layers, pictures, features=None, estimator="unbiased"):
    reducer = CKAReducer([m], [layers], "flatten", estimator)
    stream([m], [layers], loader(pictures), reducer, "cpu", progress=False, features=features)
    return reducer.result()


def test_cached_features_are_the_tensors_before_later_in_place_ops(tmp_path, resnet, pictures):
    """Item 1: the cache kept the live tensor, so bn1 was stored as relu(bn1) and bn2 as layer1.0 (CKA 1.0)."""
    layers = resolve(resnet.module, LAYERS, (3, 32, 32))
    cache = FeatureCache(tmp_path, max_gb=1)
    ns = cache.namespace(resnet, DATASET)
    live = run(resnet, layers, pictures)
    filling = run(resnet, layers, pictures, FeatureSource(cache=cache, namespaces=[ns], batches=BATCHES))
    served = run(resnet, layers, pictures, FeatureSource(cache=cache, namespaces=[ns], batches=BATCHES))
    hand = by_hand(resnet.module, pictures)
    entry = torch.load(tmp_path / ns / "5.pt", weights_only=True)
    for name in LAYERS:  # each stored tensor is the layer's own output (or input), not what later ops made of it
        np.testing.assert_allclose(entry[name].numpy(), hand[name][5].numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    flat = {n: t.double().reshape(24, -1).numpy() for n, t in hand.items()}
    for i, a in enumerate(LAYERS):
        for j, b in enumerate(LAYERS):
            want = minibatch_reference([flat[a][idx] for idx in BATCHES], [flat[b][idx] for idx in BATCHES])
            for got in (live, filling, served):
                assert got[i, j] == pytest.approx(want, abs=2e-5), (a, b)


def test_full_set_cka_keeps_copies_of_the_tensors(resnet, pictures):
    """Item 1, the other stored tensor: the biased full-set estimator keeps every batch's features until the end."""
    layers = resolve(resnet.module, LAYERS, (3, 32, 32))
    got = run(resnet, layers, pictures, estimator="biased")
    hand = {n: t.double().reshape(24, -1).numpy() for n, t in by_hand(resnet.module, pictures).items()}

    def centred_gram(x):
        k = x @ x.T
        h = np.eye(len(k)) - 1.0 / len(k)
        return h @ k @ h

    grams = {n: centred_gram(x) for n, x in hand.items()}
    for i, a in enumerate(LAYERS):
        for j, b in enumerate(LAYERS):
            want = (grams[a] * grams[b]).sum() / np.sqrt((grams[a] ** 2).sum() * (grams[b] ** 2).sum())
            assert got[i, j] == pytest.approx(want, abs=2e-5), (a, b)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    return LoadedModel(
        key="model",
        name="vit",
        label="vit",
        module=net,
        transform="Compose(...)",
        data_config={"input_size": (3, 32, 32)},
        weights="random-init",
    )


def test_feature_cache_keys_on_precision_and_device(tmp_path, vit):
    """Item 2: the namespace changes with everything that changes a captured tensor, and only with that."""

    def ns(precision="fp32", device="cpu", transform=None):
        m = vit if transform is None else LoadedModel(**{**vit.__dict__, "transform": transform})
        return FeatureCache(tmp_path, precision=precision, device=device).namespace(m, DATASET)

    assert ns("bf16") != ns("fp32") != ns("fp16") != ns("bf16")
    assert ns("tf32") == ns("fp32")  # tf32 is CUDA only: on a CPU the same forward as fp32
    assert ns(device="meta") != ns()
    assert ns(transform="Compose(Resize(40))") != ns()


def test_a_bf16_fill_is_not_served_to_an_fp32_run(tmp_path, vit, pictures):
    """Item 2: a bf16 run fills the cache; the fp32 run after it computes its own tensors, as an uncached run."""
    from vitstudy.runtime import forward_precision

    layers = resolve(vit.module, "all", (3, 32, 32))
    root = tmp_path / "features"

    def cka(precision, cached=True):
        cache = FeatureCache(root, precision=precision, device="cpu")
        with forward_precision(precision, torch.device("cpu")):
            source = FeatureSource(cache=cache, namespaces=[cache.namespace(vit, DATASET)], batches=BATCHES)
            got = run(vit, layers, pictures, source if cached else None)
        return got, cache

    bf16, filled = cka("bf16")
    fp32, cache = cka("fp32")
    plain, _ = cka("fp32", cached=False)
    assert filled.computed == 3 and cache.served == 0 and cache.computed == 3
    assert np.abs(bf16 - plain).max() > 1e-4  # the precisions differ visibly: the check below can tell them apart
    np.testing.assert_allclose(fp32, plain, atol=1e-6)
    again, cache = cka("fp32")
    assert cache.served == 3
    np.testing.assert_allclose(again, plain, atol=1e-6)


# ---- item 7: devices ----

from helpers import SMALL_DATA, TINY_VIT, assert_one_line_error, cli  # noqa: E402

WITHIN = ["analysis=cka_within", *TINY_VIT, *SMALL_DATA, "model.layers=[blocks.0,blocks.2]"]


@pytest.mark.parametrize(
    "device, expected",
    [
        (
            "cuda",
            "device 'cuda' is not available: no CUDA GPU is visible (torch.cuda.is_available() is False); valid on this machine: auto, cpu",
        ),
        ("cuda:1", "device 'cuda:1' is not available"),
        ("gpu0", "unknown device 'gpu0'; valid on this machine: auto, cpu"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, monkeypatch, device, expected):
    """Item 7: no traceback from deep in the first forward; the line names the valid devices, exit 2, nothing loads."""
    from vitstudy.pipeline import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model loaded before the device was checked"))
    assert assert_one_line_error(["run", *WITHIN, f"device={device}"], expected, tmp_path / "run", capsys) == 2


def test_the_error_names_the_valid_devices(monkeypatch):
    from vitstudy.errors import VitstudyError
    from vitstudy.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(VitstudyError, match=r"has 2 CUDA GPU\(s\); valid: auto, cpu, cuda, cuda:0, cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VitstudyError, match="valid on this machine: auto, cpu$"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")


def test_a_result_from_another_device_is_served_and_said(tmp_path, capsys):
    """Item 7: the result cache ignores the device (and keys the precision); a result computed on another device is
    copied, with a line in the output and `other_device`/`served_on` in run.json."""
    import json

    from vitstudy.analyses import get
    from vitstudy.compose import compose
    from vitstudy.pipeline.cache import run_key

    nodes = get("cka_within").models(compose(WITHIN))
    assert run_key(compose([*WITHIN, "device=cpu"]), nodes) == run_key(compose([*WITHIN, "device=cuda"]), nodes)
    assert run_key(compose([*WITHIN, "precision=bf16"]), nodes) != run_key(compose(WITHIN), nodes)

    args = ["run", *WITHIN, f"cache.dir={tmp_path / 'cache'}", "device=cpu"]
    assert cli([*args, "cache.features=true", f"hydra.run.dir={tmp_path / 'a'}"], capsys)[0] == 0
    features = json.loads((tmp_path / "a" / "run.json").read_text())["feature_cache"]  # item 2: what it keys on
    assert features["forward"] == {"precision": "fp32", "device": "cpu"} and features["batches_computed"] == 3
    assert "forward precision (tf32 counts as fp32 off CUDA)" in features["keyed_on"]
    code, out, _ = cli([*args, f"hydra.run.dir={tmp_path / 'b'}"], capsys)  # same device: served, nothing to say
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert code == 0 and "cached" in out and "note:" not in out
    assert record["other_device"] is None and record["served_on"] == {"device": "cpu"}
    source = json.loads((tmp_path / "a" / "run.json").read_text())  # as if `a` had run on a GPU
    (tmp_path / "a" / "run.json").write_text(json.dumps({**source, "device": "cuda:0", "gpu": "NVIDIA H200"}))
    code, out, _ = cli([*args, f"hydra.run.dir={tmp_path / 'c'}"], capsys)
    record = json.loads((tmp_path / "c" / "run.json").read_text())
    assert (
        code == 0
        and "vitstudy: note: the cached result was computed on cuda:0 (NVIDIA H200), this run is on cpu" in out
    )
    assert record["device"] == "cuda:0" and record["served_on"] == {"device": "cpu"}
    assert record["other_device"].startswith("the cached result was computed on cuda:0 (NVIDIA H200)")


def test_served_equals_live_for_every_token_layer_of_a_vit(tmp_path, vit, pictures):
    """Item 1 for the other layer kinds (token outputs, norms, attention and MLP sublayers, `:in` inputs): served
    from the cache, CKA equals the uncached run's to float32 rounding."""
    layers = resolve(vit.module, "all", (3, 32, 32)) + resolve(
        vit.module, ["blocks.0.norm1:in", "blocks.1.attn.proj:in", "blocks.1.mlp.fc2"], (3, 32, 32)
    )
    cache = FeatureCache(tmp_path, max_gb=1)
    ns = cache.namespace(vit, DATASET)
    live = run(vit, layers, pictures)
    run(vit, layers, pictures, FeatureSource(cache=cache, namespaces=[ns], batches=BATCHES))
    served = run(vit, layers, pictures, FeatureSource(cache=cache, namespaces=[ns], batches=BATCHES))
    assert cache.served == 3
    np.testing.assert_allclose(served, live, atol=1e-6)
