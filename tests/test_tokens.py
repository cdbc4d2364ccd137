"""token_norms and massive_activations on constructed weights whose answer is known: a norm-1000 patch planted
through the position embedding, a large value on one channel of one token, registers planted through reg_token
(timm orders class, then registers); histograms and medians against float64 numpy recomputations."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import cli
from vitstudy.analyses.massive_activations import MassiveReducer
from vitstudy.analyses.token_norms import TokenNormReducer, token_layers
from vitstudy.metrics import token_norms as tn
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.layers import resolve

KW = dict(img_size=32, patch_size=8, depth=3, num_classes=10)  # 4x4 patches
DATA = [
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.num_images=16",
    "dataset.batch_size=8",
    "cache.results=false",
]


def vit(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **KW, **kw).eval()


def dense(dim, norm, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g)
    return v * norm / v.norm()


def test_planted_norm_1000_patch_is_flagged_in_every_block_and_nowhere_else(tmp_path, capsys):
    model = vit(reg_tokens=4)  # class + 4 registers; pos_embed covers them (no_embed_class false): patch j at 5 + j
    j = 6
    offset = model.pos_embed.shape[1] - 16
    with torch.no_grad():
        model.pos_embed[0, offset + j] += dense(model.embed_dim, 1000.0)
    path = tmp_path / "planted.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=token_norms",
            "model.name=vit_tiny_patch16_224",
            "model.pretrained=false",
            f"model.checkpoint={path}",
            *(f"model.kwargs.{k}={v}" for k, v in KW.items()),
            "+model.kwargs.reg_tokens=4",
            *DATA,
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    t = pd.read_csv(out / "token_norms.csv")
    assert sorted(t.layer.unique()) == ["blocks.0", "blocks.1", "blocks.2"]
    first = t[t.layer == "blocks.0"].sort_values("token")
    assert list(first.kind[:5]) == ["class"] + ["register"] * 4 and set(first.kind[5:]) == {"patch"}
    assert first.position.isna()[:5].all() and list(first.position[5:]) == list(range(16))
    planted = t.token == 5 + j
    assert (t[planted].high_norm_rate == 1.0).all() and len(t[planted]) == 3
    assert (t[~planted].high_norm_rate == 0.0).all()
    assert (t[planted].position == j).all() and (t[planted].row == j // 4).all() and (t[planted].col == j % 4).all()
    assert t[planted].norm_mean.between(900, 1100).all()
    layers = pd.read_csv(out / "token_norms_layers.csv")
    assert layers.threshold.notna().all() and (layers.high_norm_per_image == 1.0).all()


def _loader(n=12, batch=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [
        ([torch.randn(batch, 3, 32, 32, generator=g)], torch.zeros(batch, dtype=torch.long)) for _ in range(n // batch)
    ]


def _captured(model, layers, loader):
    """float64 numpy copies of every tapped layer over the loader, by plain forward hooks."""
    got = {l.name: [] for l in layers}
    hooks = [
        model.get_submodule(l.module).register_forward_hook(
            lambda mod, a, o, name=l.name: got[name].append(o.detach().double().numpy())
        )
        for l in layers
    ]
    with torch.no_grad():
        for (x,), _ in loader:
            model(x)
    for h in hooks:
        h.remove()
    return {k: np.concatenate(v) for k, v in got.items()}


def test_histograms_equal_float64_recomputation_and_registers_sit_where_timm_puts_them():
    model = vit(reg_tokens=4)
    with torch.no_grad():
        model.reg_token[0, 2] = dense(model.embed_dim, 300.0)  # the third register: token 1 + 2 after the class token
    layers = resolve(model, "blocks", (3, 32, 32))
    m = SimpleNamespace(module=model, label="planted", stopped_after=None)
    tls = token_layers(m, layers, "token_norms")
    bins = tn.Bins(low=-3.0, high=5.0, count=200)
    reducer = TokenNormReducer(tls, bins, None, 0, None)
    loader = _loader()
    stream([m], [layers], loader, reducer, torch.device("cpu"), progress=False)
    ref = _captured(model, layers, loader)
    edges = np.linspace(-3.0, 5.0, 201)
    for t in tls:
        norms = np.sqrt((ref[t.layer.name] ** 2).sum(-1))  # (images, tokens)
        logs = np.log10(norms)
        for k in range(t.tokens):
            inner, _ = np.histogram(logs[:, k], bins=edges)
            expect = np.concatenate([[(logs[:, k] < -3).sum()], inner, [(logs[:, k] >= 5).sum()]])
            expect[-2] -= (logs[:, k] == 5).sum()  # numpy's last bin is closed; ours sends 10**5 to the overflow
            np.testing.assert_array_equal(reducer.counts[t.layer.name][k].numpy(), expect)
        np.testing.assert_allclose(reducer.s1[t.layer.name].numpy(), norms.sum(0), rtol=1e-12)
        np.testing.assert_allclose(reducer.s2[t.layer.name].numpy(), (norms**2).sum(0), rtol=1e-12)
        assert t.kinds[:5] == ("class", "register", "register", "register", "register")
        big = np.flatnonzero(norms.mean(0) > 200)
        assert list(big) == [3], big  # the planted register is token 3 in every block


def test_planted_channel_is_the_top_massive_activation_and_medians_match_numpy():
    model = vit()
    tok, ch = 9, 37  # patch 8 (after the class token), one channel
    with torch.no_grad():
        model.pos_embed[0, tok, ch] = -5000.0
    layers = resolve(model, "blocks", (3, 32, 32))
    m = SimpleNamespace(module=model, label="planted", stopped_after=None)
    tls = token_layers(m, layers, "massive_activations")
    reducer = MassiveReducer(tls, 3)
    loader = _loader()
    stream([m], [layers], loader, reducer, torch.device("cpu"), progress=False)
    ref = _captured(model, layers, loader)
    for t in tls:
        a = np.abs(ref[t.layer.name]).reshape(len(ref[t.layer.name]), -1)
        assert reducer.sites[t.layer.name][0].most_common(1)[0] == ((tok, ch), 12)
        np.testing.assert_allclose(reducer.stats[t.layer.name]["med"], np.median(a, axis=1).sum(), rtol=1e-12)
        top = -np.sort(-a, axis=1)[:, :3]
        np.testing.assert_allclose(reducer.stats[t.layer.name]["v"], top.sum(0), rtol=1e-12)
        assert reducer.stats[t.layer.name]["signed"][0] < -4000 * 12


@pytest.mark.parametrize("second_mode, expect_cut", [(False, False), (True, True)])
def test_high_norm_split_finds_a_two_percent_mode_and_no_mode_in_one_gaussian(second_mode, expect_cut):
    rng = np.random.default_rng(0)
    logs = rng.normal(0.5, 0.1, 20000)
    if second_mode:
        logs = np.concatenate([logs, rng.normal(2.0, 0.1, 400)])  # 2% of tokens 30x the norm (Darcet et al.)
    bins = tn.Bins(low=-3.0, high=5.0, count=200)
    counts = np.bincount(bins.index(torch.tensor(10.0**logs)).numpy(), minlength=202)
    s = tn.split(counts, bins)
    assert (s.first_high_bin is not None) == expect_cut
    if expect_cut:
        assert 10**0.9 < s.threshold < 10**1.6 and abs(s.high_share - 400 / 20400) < 1e-3
    else:
        assert np.isnan(s.threshold) and s.high_share == 0.0


def test_class_token_attention_to_high_norm_patches_matches_hooks():
    """analysis.cls_attention: the class token's head-mean attention in block i+1 to the patch high-norm at block i
    (the planted one) and to the others, against attention probabilities captured by plain hooks."""
    from vitstudy.analyses.token_norms import attention_pairs, layer_splits
    from vitstudy.anatomy.attention import unfused

    model = vit(reg_tokens=4)
    j = 6
    with torch.no_grad():
        model.pos_embed[0, model.pos_embed.shape[1] - 16 + j] += dense(model.embed_dim, 1000.0)
    layers = resolve(model, "blocks", (3, 32, 32))
    m = SimpleNamespace(module=model, label="planted", stopped_after=None)
    tls = token_layers(m, layers, "token_norms")
    reducer = TokenNormReducer(tls, tn.Bins(low=-3.0, high=5.0, count=200), None, 0, None)
    pairs = attention_pairs(m, tls)
    assert [(s.name, prev) for s, prev in pairs] == [("blocks.1.attn", "blocks.0"), ("blocks.2.attn", "blocks.1")]
    reducer.attention = {s.name: (s, prev) for s, prev in pairs}
    loader = _loader()
    with unfused(model):
        stream([m], [layers + [s.layer for s, _ in pairs]], loader, reducer, torch.device("cpu"), progress=False)
    got = {}
    hooks = [
        model.blocks[i].attn.attn_drop.register_forward_pre_hook(
            lambda mod, a, i=i: got.setdefault(i, []).append(a[0].detach().double().numpy())
        )
        for i in (1, 2)
    ]
    with unfused(model), torch.no_grad():
        for (x,), _ in loader:
            model(x)
    for h in hooks:
        h.remove()
    splits = layer_splits(reducer, tls, None)
    for i, prev in ((1, "blocks.0"), (2, "blocks.1")):
        cls = np.concatenate(got[i]).mean(1)[:, 0, 5:]  # (images, 16 patches): head mean of the class row
        s = splits[prev]
        first = s.first_high_bin
        high = reducer.att_sum[prev][first:].sum() / reducer.att_n[prev][first:].sum()
        normal = reducer.att_sum[prev][:first].sum() / reducer.att_n[prev][:first].sum()
        assert float(high) == pytest.approx(cls[:, j].mean(), rel=1e-9)
        assert float(normal) == pytest.approx(np.delete(cls, j, axis=1).mean(), rel=1e-9)


def test_probes_planted_patch_is_the_high_group_and_a_layer_without_high_tokens_says_so(tmp_path, capsys):
    model = vit()
    j = 6
    with torch.no_grad():
        model.pos_embed[0, 1 + j] += dense(model.embed_dim, 1000.0)
    path = tmp_path / "planted.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=token_norms",
            "analysis.probes=true",
            "model.name=vit_tiny_patch16_224",
            "model.pretrained=false",
            f"model.checkpoint={path}",
            *(f"model.kwargs.{k}={v}" for k, v in KW.items()),
            *DATA,
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    t = pd.read_csv(out / "token_norms_probes.csv")
    assert list(t.columns[:10]) == [
        "model",
        "weights",
        "layer",
        "target",
        "tokens",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "num_train",
        "num_test",
    ]
    assert len(t) == 4 and set(t.layer) == {"blocks.0"}  # histogram cut; equal shares at every block: the first
    high = t[t.tokens == "high"].set_index("target")
    # one high-norm token per image (the planted one): 16 images, 5 of them test (probe_test_fraction 0.3)
    assert (high.num_train == 11).all() and (high.num_test == 5).all()
    assert high.loc["position", "accuracy"] == 1.0  # every high-norm token sits at position j
    normal = t[t.tokens == "normal"]
    assert (normal.num_train == 44).all() and (normal.num_test == 20).all()  # 4 random normal tokens per image
    assert (t.accuracy_ci_low <= t.accuracy).all() and (t.accuracy <= t.accuracy_ci_high).all()
    # no threshold any token passes at a huge threshold: the high rows say so, in the table and on stderr
    out2 = tmp_path / "run2"
    code, _, err = cli(
        [
            "run",
            "analysis=token_norms",
            "analysis.probes=true",
            "model.name=vit_tiny_patch16_224",
            "model.pretrained=false",
            f"model.checkpoint={path}",
            *(f"model.kwargs.{k}={v}" for k, v in KW.items()),
            *DATA,
            "analysis.threshold=1e6",
            f"hydra.run.dir={out2}",
        ],
        capsys,
    )
    assert code == 0, err
    t2 = pd.read_csv(out2 / "token_norms_probes.csv")
    assert set(t2.layer) == {"blocks.2"}  # no layer has high-norm tokens: the last block
    h2 = t2[t2.tokens == "high"]
    assert h2.accuracy.isna().all() and (h2.note == "no high-norm tokens at this layer").all()
    assert "no high-norm tokens at this layer" in err
    assert t2[t2.tokens == "normal"].accuracy.notna().all()


def _numpy_ridge_accuracy(x_train, y_train, x_test, y_test, alpha):
    """float64 numpy: centred ridge to {-1, 1} one-hot targets, lambda = alpha tr(C) / D, argmax prediction."""
    classes = np.unique(y_train)
    y = -np.ones((len(y_train), len(classes)))
    y[np.arange(len(y_train)), np.searchsorted(classes, y_train)] = 1.0
    mx, my = x_train.mean(0), y.mean(0)
    xc = x_train - mx
    c = xc.T @ xc
    w = np.linalg.solve(c + alpha * np.trace(c) / c.shape[0] * np.eye(c.shape[0]), xc.T @ (y - my))
    pred = classes[((x_test - mx) @ w + my).argmax(1)]
    return float((pred == y_test).mean())


def test_probe_accuracy_equals_float64_numpy_ridge_on_a_constructed_case():
    from vitstudy.analyses.token_norms import LayerSplit, ProbeReducer, TokenLayer, probe_rows
    from vitstudy.pipeline.layers import Layer

    rng = np.random.default_rng(0)
    b, rows, cols, dim, alpha = 40, 2, 2, 6, 0.05
    layer = Layer(name="blocks.0", module="blocks.0", is_input=False, shape=(rows * cols + 1, dim), layout="NLC")
    tl = TokenLayer(layer=layer, depth=0, rows=rows, cols=cols, prefix=1, kinds=("class",) + ("patch",) * 4)
    # patches 0 and 3 high-norm (norm ~ 100), 1 and 2 normal; features carry position and label plus noise
    labels = rng.integers(0, 3, b)
    x = rng.normal(size=(b, 5, dim))
    x[:, 1:, :4] += 1.5 * np.eye(4)[None]
    x[np.arange(b), 1:, 4] += labels[:, None] * 0.7
    x[:, [1, 4]] *= 100.0 / np.linalg.norm(x[:, [1, 4]], axis=-1, keepdims=True)
    split = LayerSplit(first_high_bin=None, threshold=50.0, rule="analysis.threshold", separation=float("nan"))
    red = ProbeReducer([tl], {"blocks.0": split}, tn.Bins(low=-3, high=5, count=10), per_image=2, seed=0)
    for s in range(0, b, 8):
        red.on_tensor(0, layer, torch.tensor(x[s : s + 8], dtype=torch.float32))
        red.end_batch(torch.tensor(labels[s : s + 8]), [])
    got, info = probe_rows(red, ["blocks.0"], 0.25, alpha, seed=5)
    test = np.zeros(b, dtype=bool)
    test[np.random.default_rng(5).permutation(b)[:10]] = True
    assert info == {"test_images": 10, "train_images": 30}
    xf = x.astype(np.float32).astype(np.float64)  # the reducer keeps float32 features
    for r in got:
        pos = [0, 3] if r["tokens"] == "high" else [1, 2]  # both of each group: per_image = 2 takes them all
        feats = xf[:, [1 + q for q in pos]]  # (b, 2, dim)
        y = np.repeat(np.array(pos)[None], b, 0) if r["target"] == "position" else np.repeat(labels[:, None], 2, 1)
        tr, te = ~test, test
        want = _numpy_ridge_accuracy(
            feats[tr].reshape(-1, dim), y[tr].ravel(), feats[te].reshape(-1, dim), y[te].ravel(), alpha
        )
        assert (r["num_train"], r["num_test"]) == (60, 20)
        values, counts = np.unique(y[tr].ravel(), return_counts=True)
        assert r["majority_accuracy"] == pytest.approx(np.mean(y[te].ravel() == values[counts.argmax()]), abs=1e-12)
        assert r["accuracy"] == pytest.approx(want, abs=1e-12), r
        lo, hi = r["accuracy_ci_low"], r["accuracy_ci_high"]
        z = 1.959963984540054
        centre = (want + z * z / 40) / (1 + z * z / 20)
        half = z / (1 + z * z / 20) * np.sqrt(want * (1 - want) / 20 + z * z / 1600)
        assert (lo, hi) == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-12)
    assert {(r["target"], r["tokens"]) for r in got} == {
        (t, g) for t in ("position", "label") for g in ("high", "normal")
    }


def test_probe_layers_not_tapped_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = cli(
        [
            "run",
            "analysis=token_norms",
            "analysis.probes=true",
            "analysis.probe_layers=[blocks.7]",
            "model.name=vit_tiny_patch16_224",
            "model.pretrained=false",
            *(f"model.kwargs.{k}={v}" for k, v in KW.items()),
            *DATA,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code != 0 and "Traceback" not in err
    assert "analysis.probe_layers: blocks.7 not among the tapped layers (blocks.0, blocks.1, blocks.2)" in err
    assert not (tmp_path / "run" / "token_norms_probes.csv").exists()
