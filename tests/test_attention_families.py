"""Attention sites of the hierarchical and hybrid families (PVT-v2, Twins, MaxViT/CoAtNet, NesT, MViT-v2, LeViT,
EfficientFormer, CrossViT, TNT, Hiera): the captured probabilities against a float64 recomputation from each
module's own q/k projections, the pixel positions of queries and keys against timm's own partition functions applied
to a coordinate map, mean distance of uniform attention against float64 numpy loops, and the refusals."""

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from vitstudy.anatomy.attention import sites, unfused
from vitstudy.errors import VitstudyError
from vitstudy.metrics import fourier
from vitstudy.pipeline.taps import tap

# tiny configs: timm's own module classes, shrunk (by constructor kwargs, or the model class with a smaller config)


def _maxxvit_model(name):
    from dataclasses import replace

    from timm.models.maxxvit import MaxxVit, model_cfgs

    c = model_cfgs[name]
    c = replace(
        c,
        embed_dim=(16, 16, 32, 32),
        depths=(1, 1, 2, 1),
        stem_width=(8, 16),
        transformer_cfg=replace(c.transformer_cfg, dim_head=8),
    )
    return MaxxVit(c, img_size=64, num_classes=10)


def _mvit_model(**kw):
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    return MultiScaleVit(
        MultiScaleVitCfg(depths=(1, 2, 1, 1), embed_dim=16, num_heads=1, **kw), img_size=64, num_classes=10
    )


def _timm(arch, **kw):
    return lambda: timm.create_model(arch, num_classes=10, **kw)


SMALL4 = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2))
FAMILIES = {
    "pvt_v2": (_timm("pvt_v2_b0", **SMALL4), (64, 64)),
    "pvt_v2_li": (_timm("pvt_v2_b0", linear=True, **SMALL4), (64, 64)),
    "twins_svt": (_timm("twins_svt_small", img_size=64, wss=(4, 4, 2, 1), **SMALL4), (64, 64)),
    "twins_svt_padded": (_timm("twins_svt_small", img_size=96, wss=(5, 5, 2, 1), **SMALL4), (96, 96)),
    "twins_pcpvt": (_timm("twins_pcpvt_small", img_size=64, **SMALL4), (64, 64)),
    "maxvit": (lambda: _maxxvit_model("maxvit_nano_rw"), (64, 64)),  # rel-pos MLP bias, block and grid partitions
    "coatnet": (lambda: _maxxvit_model("coatnet_nano_rw"), (64, 64)),  # conv stages, then global Attention2d
    "nest": (
        lambda: __import__("timm.models.nest", fromlist=["Nest"]).Nest(
            img_size=32, patch_size=2, embed_dims=(16, 32, 32), num_heads=(1, 2, 2), depths=(1, 1, 1), num_classes=10
        ),
        (32, 32),
    ),
    "mvitv2": (lambda: _mvit_model(use_cls_token=False), (64, 64)),
    "mvitv2_cls": (lambda: _mvit_model(use_cls_token=True), (64, 64)),  # the class token stays unpooled in front
    "levit": (_timm("levit_128s", img_size=64), (64, 64)),
    "efficientformer": (
        _timm("efficientformer_l1", depths=(1, 1, 1, 2), embed_dims=(16, 16, 32, 32), num_vit=1),
        (224, 224),
    ),
    "crossvit": (_timm("crossvit_tiny_240", img_size=120, depth=((1, 1, 0),)), (120, 120)),
    "tnt": (
        _timm(
            "tnt_s_patch16_224",
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=64,
            inner_dim=16,
            num_heads_outer=4,
            num_heads_inner=2,
        ),
        (32, 32),
    ),
    "hiera": (_timm("hiera_tiny_224", img_size=64, embed_dim=16, num_heads=1, stages=(1, 1, 1, 1)), (64, 64)),
}


def _model(key, dtype=torch.float64):
    make, size = FAMILIES[key]
    torch.manual_seed(0)
    return make().eval().to(dtype), size


def _capture(model, size, batch=2):
    """Sites, each attention module's positional inputs and its captured probabilities, in one forward."""
    site_list = sites(model, size)
    modules = dict(model.named_modules())
    inputs, probs = {}, {}
    handles = [
        modules[s.name].register_forward_pre_hook(lambda m, a, _n=s.name: inputs.setdefault(_n, a)) for s in site_list
    ]
    torch.manual_seed(1)
    x = torch.randn(batch, 3, *size, dtype=next(model.parameters()).dtype)
    try:
        with (
            unfused(model, site_list),
            tap(model, [s.layer for s in site_list], lambda l, t: probs.setdefault(l.name, t)),
            torch.no_grad(),
        ):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return site_list, inputs, probs


# ------------------------------------------------------------------ float64 recomputation from q and k, per module


def _sm(scores):
    return scores.softmax(dim=-1)


def _pvt(mod, x, size):  # PVT-v2 Attention and Twins GlobalSubSampleAttn: q on every token, k from the reduced map
    b, n, c = x.shape
    h = mod.num_heads
    q = mod.q(x).reshape(b, n, h, -1).transpose(1, 2)
    xs = x
    if getattr(mod, "pool", None) is not None:
        xs = mod.act(
            mod.norm(mod.sr(mod.pool(x.transpose(1, 2).reshape(b, c, *size))).reshape(b, c, -1).transpose(1, 2))
        )
    elif mod.sr is not None:
        xs = mod.norm(mod.sr(x.transpose(1, 2).reshape(b, c, *size)).reshape(b, c, -1).transpose(1, 2))
    k = mod.kv(xs).reshape(b, -1, 2, h, c // h)[:, :, 0].transpose(1, 2)
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(c // h))


def _twins_lsa(mod, x, size):  # (B, windows, heads, n, n) over the zero-padded map
    b, n, c = x.shape
    hh, ww = size
    ws, h = mod.ws, mod.num_heads
    xm = F.pad(x.view(b, hh, ww, c), (0, 0, 0, (-ww) % ws, 0, (-hh) % ws))
    gh, gw = xm.shape[1] // ws, xm.shape[2] // ws
    win = xm.view(b, gh, ws, gw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ws * ws, c)
    qkv = mod.qkv(win).reshape(b, gh * gw, ws * ws, 3, h, c // h)
    q, k = qkv[:, :, :, 0].transpose(2, 3), qkv[:, :, :, 1].transpose(2, 3)
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(c // h))


def _maxxvit(mod, x, *_):  # Attention2d (NCHW windows) or AttentionCl (NHWC windows), plus the relative position bias
    h, d = mod.num_heads, mod.dim_head
    if type(mod).__name__ == "Attention2d":
        b = x.shape[0]
        qkv = (
            mod.qkv(x).reshape(b, h, 3 * d, -1)
            if mod.head_first
            else mod.qkv(x).reshape(b, 3, h, d, -1).transpose(1, 2).reshape(b, h, 3 * d, -1)
        )
        q, k = qkv[:, :, :d].transpose(-2, -1), qkv[:, :, d : 2 * d].transpose(-2, -1)
    else:
        b = x.shape[0]
        t = mod.qkv(x).reshape(b, -1, h, 3 * d).transpose(1, 2)
        q, k = t[..., :d], t[..., d : 2 * d]
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    if mod.rel_pos is not None:
        s = s + mod.rel_pos.get_bias()
    return _sm(s)


def _nest(mod, x, *_):  # (B, heads, blocks, n, n)
    b, t, n, c = x.shape
    h = mod.num_heads
    qkv = mod.qkv(x).reshape(b, t, n, 3, h, c // h).permute(3, 0, 4, 1, 2, 5)
    return _sm(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(c // h))


def _mvit(mod, x, size):
    from timm.models.mvitv2 import cal_rel_pos_type, reshape_post_pool, reshape_pre_pool

    b, n, _ = x.shape
    qkv = mod.qkv(x).reshape(b, n, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q_size = k_size = list(size)
    if mod.pool_q is not None:
        q, tok = reshape_pre_pool(q, list(size), mod.has_cls_token)
        q, q_size = reshape_post_pool(mod.pool_q(q), mod.num_heads, tok)
    if mod.norm_q is not None:
        q = mod.norm_q(q)
    if mod.pool_k is not None:
        k, tok = reshape_pre_pool(k, list(size), mod.has_cls_token)
        k, k_size = reshape_post_pool(mod.pool_k(k), mod.num_heads, tok)
    if mod.norm_k is not None:
        k = mod.norm_k(k)
    s = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)
    if mod.rel_pos_type == "spatial":
        s = cal_rel_pos_type(s, q, mod.has_cls_token, q_size, k_size, mod.rel_pos_h, mod.rel_pos_w)
    return _sm(s)


def _levit(mod, x, *_):  # Attention and AttentionDownsample (linear, token layout), plus the learned bias
    b, n, _ = x.shape
    h, kd = mod.num_heads, mod.key_dim
    if type(mod).__name__ == "AttentionDownsample":
        k = mod.kv(x).view(b, n, h, -1)[..., :kd].permute(0, 2, 1, 3)
        q = mod.q(x).view(b, -1, h, kd).permute(0, 2, 1, 3)
    else:
        t = mod.qkv(x).view(b, n, h, -1)
        q, k = t[..., :kd].permute(0, 2, 1, 3), t[..., kd : 2 * kd].permute(0, 2, 1, 3)
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(kd) + mod.get_attention_biases(x.device))


def _efficientformer(mod, x, *_):
    b, n, _ = x.shape
    t = mod.qkv(x).reshape(b, n, mod.num_heads, -1).permute(0, 2, 1, 3)
    q, k = t[..., : mod.key_dim], t[..., mod.key_dim : 2 * mod.key_dim]
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(mod.key_dim) + mod.get_attention_biases(x.device))


def _vit(mod, x, *_):  # timm vision_transformer Attention (CrossViT branches)
    b, n, c = x.shape
    qkv = mod.qkv(x).reshape(b, n, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = mod.q_norm(qkv[0]), mod.k_norm(qkv[1])
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))


def _cross(mod, x, *_):  # CrossViT fusion CrossAttention: the class token (row 0) queries every token
    b, n, c = x.shape
    h = mod.num_heads
    q = mod.wq(x[:, :1]).reshape(b, 1, h, c // h).transpose(1, 2)
    k = mod.wk(x).reshape(b, n, h, c // h).transpose(1, 2)
    return _sm(q @ k.transpose(-2, -1) / math.sqrt(c // h))


def _tnt(mod, x, *_):
    b, n, _ = x.shape
    qk = mod.qk(x).reshape(b, n, 2, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)
    return _sm(qk[0] @ qk[1].transpose(-2, -1) / math.sqrt(mod.head_dim))


def _hiera(mod, x, *_):
    b, n, _ = x.shape
    if mod.use_mask_unit_attn:
        nw = n // (mod.q_stride * mod.window_size)
        qkv = mod.qkv(x).reshape(b, -1, nw, 3, mod.heads, mod.head_dim).permute(3, 0, 4, 2, 1, 5)
        q = qkv[0].view(b, mod.heads, nw, mod.q_stride, -1, mod.head_dim).amax(dim=3)
    else:
        qkv = mod.qkv(x).reshape(b, n, 3, mod.heads, mod.head_dim).permute(2, 0, 3, 1, 4)
        q = qkv[0].view(b, mod.heads, mod.q_stride, -1, mod.head_dim).amax(dim=2)
    return _sm(q @ qkv[1].transpose(-2, -1) / math.sqrt(mod.head_dim))


RECOMPUTE = {
    "pvt_v2": lambda m, a: _pvt(m, a[0], a[1]),
    "pvt_v2_li": lambda m, a: _pvt(m, a[0], a[1]),
    "twins_svt": lambda m, a: (_twins_lsa if hasattr(m, "ws") else _pvt)(m, a[0], a[1]),
    "twins_svt_padded": lambda m, a: (_twins_lsa if hasattr(m, "ws") else _pvt)(m, a[0], a[1]),
    "twins_pcpvt": lambda m, a: _pvt(m, a[0], a[1]),
    "maxvit": lambda m, a: _maxxvit(m, a[0]),
    "coatnet": lambda m, a: _maxxvit(m, a[0]),
    "nest": lambda m, a: _nest(m, a[0]),
    "mvitv2": lambda m, a: _mvit(m, a[0], a[1]),
    "mvitv2_cls": lambda m, a: _mvit(m, a[0], a[1]),
    "levit": lambda m, a: _levit(m, a[0]),
    "efficientformer": lambda m, a: _efficientformer(m, a[0]),
    "crossvit": lambda m, a: (_cross if type(m).__name__ == "CrossAttention" else _vit)(m, a[0]),
    "tnt": lambda m, a: _tnt(m, a[0]),
    "hiera": lambda m, a: _hiera(m, a[0]),
}


@pytest.mark.parametrize("key", list(FAMILIES))
def test_captured_probabilities_equal_float64_recomputation_from_q_and_k(key):
    model, size = _model(key)
    site_list, inputs, probs = _capture(model, size)
    assert site_list, key
    modules = dict(model.named_modules())
    with torch.no_grad():
        for s in site_list:
            got = probs[s.layer.name]
            s.check(got, 2)  # shape (batch, groups, heads, Q, K) and rows summing to 1
            want = RECOMPUTE[key](modules[s.name], inputs[s.name])
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want.reshape(got.shape), rtol=0, atol=1e-10, msg=f"{key} {s.name}")


# ------------------------------------------------------------------ positions of queries and keys


def _coords(h, w, stride):
    """(1, h, w, 2) float64 pixel centres of a map's cells, for timm's partition functions to move around."""
    r, c = torch.meshgrid(
        (torch.arange(h, dtype=torch.float64) + 0.5) * stride[0],
        (torch.arange(w, dtype=torch.float64) + 0.5) * stride[1],
        indexing="ij",
    )
    return torch.stack([r, c], dim=-1)[None]


def test_maxvit_block_and_grid_positions_follow_timm_partitions():
    from timm.models.maxxvit import grid_partition, window_partition

    model, size = _model("maxvit", torch.float32)
    modules = dict(model.named_modules())
    for s in sites(model, size):
        parent = modules[s.name.rsplit(".", 1)[0]]
        part = window_partition if parent.partition_block else grid_partition
        want = part(_coords(*s.grid, s.stride), list(parent.partition_size)).reshape(s.dist.shape[0], -1, 2)
        torch.testing.assert_close(s.q_pos, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(s.k_pos, want, rtol=0, atol=1e-12)
    assert {s.kind for s in sites(model, size)} == {"window", "grid"}


def test_nest_positions_follow_timm_blockify():
    from timm.models.nest import blockify

    model, size = _model("nest", torch.float32)
    for s in sites(model, size):
        want = blockify(_coords(*s.grid, s.stride), s.window[0])[0]
        torch.testing.assert_close(s.k_pos, want, rtol=0, atol=1e-12)


def test_hiera_positions_follow_timm_reroll():
    """Hiera's unrolled order: the first stage's positions rerolled by timm's Reroll give back the raster grid."""
    model, size = _model("hiera", torch.float32)
    s0 = sites(model, size)[0]
    flat = s0.k_pos.transpose(0, 1).reshape(1, -1, 2)  # token n = t * windows + w
    grid = model.reroll(flat, 0)  # the first stage: back to raster order (B, H, W, C)
    g = model.unroll.size
    torch.testing.assert_close(grid, _coords(g[0], g[1], (size[0] / g[0], size[1] / g[1])), rtol=0, atol=1e-12)


def _np_pairs(q, k):
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    return np.sqrt(((q[:, None, :] - k[None, :, :]) ** 2).sum(-1))


def _uniform(s, batch=1):
    g, q, k = s.dist.shape
    return torch.full((batch, g, s.heads, q, k), 1.0 / k, dtype=torch.float64)


def _to_layout(a, layout):
    if layout == "bhqk":
        return a[:, 0]
    if layout == "(bg)hqk":
        return a.reshape(-1, *a.shape[2:])
    if layout == "bhgqk":
        return a.transpose(1, 2)
    return a


def test_pvt_v2_uniform_attention_over_reduced_keys_matches_float64_loops():
    """Query cells at (i + 0.5) s of the H x W grid; the sr x sr conv's keys at the centres of their sr x sr blocks."""
    model, size = _model("pvt_v2", torch.float32)
    for s in sites(model, size):
        h, w = s.grid
        sr = (
            model.stages[[i for i, st in enumerate(model.stages) if s.name.startswith(f"stages.{i}.")][0]]
            .blocks[0]
            .attn.sr
        )
        r = sr.stride[0] if sr is not None else 1
        stride = size[0] / h
        q = [((i + 0.5) * stride, (j + 0.5) * stride) for i in range(h) for j in range(w)]
        k = [((i * r + r / 2) * stride, (j * r + r / 2) * stride) for i in range(h // r) for j in range(w // r)]
        want = _np_pairs(q, k).mean()
        got = float(s.per_image(_to_layout(_uniform(s), s.layout))[0, 0])
        assert got == pytest.approx(want, rel=1e-12), s.name
        assert s.uniform_distance() == pytest.approx(want, rel=1e-12), s.name  # the figures' reference line


def test_twins_padded_windows_count_only_real_queries():
    """wss=5 on a 24x24 map: windows of the 25x25 zero-padded map; padded keys at their place beyond the border,
    padded queries dropped: the mean is over the 576 real queries of the mean distance to their window's 25 keys."""
    model, size = _model("twins_svt_padded", torch.float32)
    s = sites(model, size)[0]
    assert s.grid == (24, 24) and s.window == (5, 5) and s.queries == 576
    st = size[0] / 24
    total = 0.0
    for i in range(24):
        for j in range(24):
            wi, wj = i // 5, j // 5
            keys = [
                ((a + 0.5) * st, (b + 0.5) * st) for a in range(5 * wi, 5 * wi + 5) for b in range(5 * wj, 5 * wj + 5)
            ]
            total += _np_pairs([((i + 0.5) * st, (j + 0.5) * st)], keys).mean()
    got = float(s.per_image(_to_layout(_uniform(s), s.layout))[0, 0])
    assert got == pytest.approx(total / 576, rel=1e-12)
    assert s.uniform_distance() == pytest.approx(total / 576, rel=1e-12)  # the figures' reference line


def test_levit_downsample_queries_are_the_strided_subgrid():
    model, size = _model("levit", torch.float32)
    down = [s for s in sites(model, size) if s.kind == "pooled"]
    assert down
    for s in down:
        res, st = s.grid[0], size[0] / s.grid[0]
        q = [((i + 0.5) * st, (j + 0.5) * st) for i in range(0, res, 2) for j in range(0, res, 2)]
        k = [((i + 0.5) * st, (j + 0.5) * st) for i in range(res) for j in range(res)]
        onehot = torch.zeros(1, 1, s.heads, len(q), len(k), dtype=torch.float64)
        onehot[..., 0] = 1.0  # every query looks at key 0 (the top-left cell)
        got = float(s.per_image(_to_layout(onehot, s.layout))[0, 0])
        assert got == pytest.approx(_np_pairs(q, k)[:, 0].mean(), rel=1e-12)


def test_tnt_inner_tokens_sit_on_their_strided_conv_footprints():
    """TNT (non-legacy): 8 px patches, a 7x7 stride-4 pad-3 conv inside each patch: pixel tokens centred at 0.5 and
    4.5 px from the patch corner; uniform inner attention: the mean distance of 4 points on a 4 px square."""
    model, size = _model("tnt", torch.float32)
    inner = sites(model, size)[0]
    assert inner.name == "blocks.0.attn_in"
    pts = [(0.5, 0.5), (0.5, 4.5), (4.5, 0.5), (4.5, 4.5)]
    torch.testing.assert_close(inner.k_pos[0], torch.tensor(pts, dtype=torch.float64))
    torch.testing.assert_close(inner.k_pos[5] - inner.k_pos[0], torch.tensor([[8.0, 8.0]] * 4, dtype=torch.float64))
    got = float(inner.per_image(_to_layout(_uniform(inner), inner.layout))[0, 0])
    assert got == pytest.approx(_np_pairs(pts, pts).mean(), rel=1e-12)  # (0 + 4 + 4 + 4 sqrt 2) / 4


def test_crossvit_branches_have_their_own_grids_and_the_class_token_is_dropped():
    model, size = _model("crossvit", torch.float32)
    site_list = sites(model, size)
    grids = {s.grid for s in site_list}
    assert grids == {(10, 10), (7, 7)}  # 120 px / 12 and 112 px / 16 (branch 1 resizes the image to 112)
    for s in site_list:
        if s.kind == "cross":
            continue
        g, st = s.grid[0], size[0] / s.grid[0]
        pts = [((i + 0.5) * st, (j + 0.5) * st) for i in range(g) for j in range(g)]
        a = _uniform(s)  # rows 1/(1 + g^2) over every key incl. the class token, not renormalised
        got = float(s.per_image(_to_layout(a, s.layout))[0, 0])
        assert got == pytest.approx(_np_pairs(pts, pts).sum(1).mean() / (1 + g * g), rel=1e-12)


def test_crossvit_cross_attention_sites_measure_the_spread_of_the_class_tokens_keys():
    """Fusion i: branch i's class token queries its own class token and branch i+1's patch grid. Its distance is
    sum_jk A_j A_k D_jk over the patch keys (the expected distance between two keys drawn from its attention),
    checked against float64 numpy loops on probabilities recomputed from the module's own wq/wk; the prefix share is
    A_0 and the renormalised spread divides by the patch mass squared. Sites are listed in execution order."""
    model, size = _model("crossvit")
    site_list, inputs, probs = _capture(model, size, batch=3)
    names = [s.name for s in site_list]
    assert names == [
        "blocks.0.blocks.0.0.attn",
        "blocks.0.blocks.1.0.attn",
        "blocks.0.fusion.0.attn",
        "blocks.0.fusion.1.attn",
    ]
    order = []
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda m, a, _n=n: order.append(_n)) for n in names]
    with torch.no_grad():
        model(torch.zeros(1, 3, *size, dtype=torch.float64))
    for h in hooks:
        h.remove()
    assert order == names  # the analyses' Counter expects the maps in this order
    for s, other in zip(
        site_list[2:], ((7, 7), (10, 10))
    ):  # fusion 0 looks at branch 1 (7x7 grid), fusion 1 at branch 0
        assert s.kind == "cross" and s.grid == other
        st = size[0] / other[0]
        pts = [((i + 0.5) * st, (j + 0.5) * st) for i in range(other[0]) for j in range(other[1])]
        d = _np_pairs(pts, pts)
        with torch.no_grad():
            want = RECOMPUTE["crossvit"](modules[s.name], inputs[s.name])  # (B, heads, 1, 1 + N)
        a = want[:, :, 0].numpy()
        torch.testing.assert_close(probs[s.layer.name], want, rtol=0, atol=1e-10)
        spread = np.einsum("bhj,jk,bhk->bh", a[..., 1:], d, a[..., 1:])
        got = s.per_image(probs[s.layer.name]).numpy()
        np.testing.assert_allclose(got, spread, rtol=1e-10)
        split = s.split(probs[s.layer.name])
        np.testing.assert_allclose(split.share.numpy(), a[..., 0], rtol=1e-10)
        np.testing.assert_allclose(split.patch_distance.numpy(), spread / (1 - a[..., 0]) ** 2, rtol=1e-10)
        k = 1 + len(pts)
        assert s.uniform_distance() == pytest.approx(d.sum() / k**2, rel=1e-12)
        assert s.uniform_patch_distance() == pytest.approx(d.mean(), rel=1e-12)
        onehot = torch.zeros(1, s.heads, 1, k, dtype=torch.float64)
        onehot[..., 5] = 1.0
        assert float(s.per_image(onehot).abs().max()) == 0.0  # all on one patch: no spread


def test_crossvit_cross_attention_is_refused_by_local_global_cka_with_its_reason(tmp_path, capsys):
    from helpers import cli

    code, _, err = cli(
        [
            "run",
            "analysis=local_global_cka",
            "model.name=crossvit_tiny_240",
            "model.pretrained=false",
            "model.kwargs.img_size=120",
            "+model.kwargs.depth=[[1,1,0]]",
            "analysis.block=2",
            "reference.name=resnet18",
            "reference.pretrained=false",
            "dataset=synthetic",
            "dataset.num_images=4",
            f"hydra.run.dir={tmp_path}",
        ],
        capsys,
    )
    assert code != 0 and "cross-attention whose only query is a class token" in err


# ------------------------------------------------------------------ refusals and the fourier crash


def test_coat_refuses_with_the_true_reason():
    model = timm.create_model("coat_lite_tiny", img_size=64, num_classes=10)
    with pytest.raises(VitstudyError, match="factorized attention.*no query-by-key probability map"):
        sites(model, (64, 64))


def test_half_diagonal_of_a_map_with_too_few_columns_refuses_in_one_line():
    """NesT at 224 px: a (16 blocks, 196 tokens, 96 channels) tensor read as a 196 x 96 map crashed in torch.arange."""
    with pytest.raises(VitstudyError, match="no diagonal") as err:
        fourier.half_diagonal(196, 96)
    assert "\n" not in str(err.value)
    rows, cols = fourier.half_diagonal(8, 8)
    assert rows.tolist() == cols.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------ rollout through windows and stages


def _random_maps(site_list, b=2, seed=0):
    from vitstudy.anatomy.attention import positions

    g = torch.Generator().manual_seed(seed)
    out = []
    for s in site_list:
        q, k = positions(s)
        a = torch.rand(b, q.shape[0], q.shape[1], k.shape[1], generator=g, dtype=torch.float64)
        out.append(a / a.sum(-1, keepdim=True))
    return out


def test_staged_rollout_equals_plain_rollout_on_one_grid():
    from vitstudy.analyses.rollout import compose, plan
    from vitstudy.metrics import attention as am

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
    site_list = sites(model)
    maps = _random_maps(site_list)
    steps, prefix = plan(site_list, "vit")
    v = torch.zeros(2, 17, dtype=torch.float64)
    v[:, 0] = 1
    got = compose(steps, maps, v, 0.5)
    want = am.rollout([a[:, 0] for a in maps], 0.5)[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_swin_rollout_composes_shifted_windows_and_patch_merging_at_full_resolution():
    """Float64 brute force: every Swin block's attention scattered into a full (N x N) matrix with timm's own
    roll + window_partition on an index map, the patch merging as the 2x2 average (rows of a 2x-downsampling), and
    R = Ã_4 M Ã_3 Ã_2 M' ...: the mean of R's last-stage rows equals the staged rollout's map."""
    from timm.models.swin_transformer import window_partition

    from vitstudy.analyses.rollout import compose, plan

    model = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=32, window_size=4, depths=(2, 2), num_heads=(2, 4), embed_dim=32
    )
    site_list = sites(model)
    maps = _random_maps(site_list)
    steps, _ = plan(site_list, "swin")
    r = 0.5
    full = None
    prev = None
    for s, a in zip(site_list, maps):
        gh, gw = s.grid
        n = gh * gw
        idx = torch.arange(n, dtype=torch.float64).reshape(1, gh, gw, 1)
        idx = torch.roll(idx, shifts=(-s.shift[0], -s.shift[1]), dims=(1, 2))
        win = window_partition(idx, s.window).reshape(-1, s.window[0] * s.window[1]).long()  # (windows, n) raster index
        big = torch.zeros(2, n, n, dtype=torch.float64)
        for w in range(win.shape[0]):
            big[:, win[w][:, None], win[w][None, :]] = a[:, w]
        step = r * big + (1 - r) * torch.eye(n, dtype=torch.float64)
        if prev is not None and prev != n:  # patch merging: token (i, j) = mean of the 2x2 block below it
            ph, pw = gh * 2, gw * 2
            m = torch.zeros(n, ph * pw, dtype=torch.float64)
            for i in range(gh):
                for j in range(gw):
                    for di in range(2):
                        for dj in range(2):
                            m[i * gw + j, (2 * i + di) * pw + 2 * j + dj] = 0.25
            full = m @ full
        full = step if full is None else step @ full
        prev = n
    want = full.mean(dim=1)  # mean of the last stage's rows: no CLS token
    nout = site_list[-1].grid[0] * site_list[-1].grid[1]
    got = compose(steps, maps, torch.full((2, nout), 1.0 / nout, dtype=torch.float64), r)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


# ------------------------------------------------------------------ end to end


PCPVT_CLI = [
    "model.name=twins_pcpvt_small",
    "model.pretrained=false",
    "model.data.input_size=[3,64,64]",
    "model.kwargs.img_size=64",
    "+model.kwargs.depths=[1,1,1,1]",
    "+model.kwargs.embed_dims=[16,32,32,32]",
    "+model.kwargs.num_heads=[1,2,2,2]",
]
DATA = [
    "dataset=synthetic",
    "dataset.num_images=8",
    "dataset.batch_size=4",
    "dataset.image_size=64",
    "dataset.num_workers=0",
]


def test_attention_distance_and_rollout_run_on_twins_pcpvt_end_to_end(tmp_path, capsys):
    import pandas as pd

    from helpers import cli

    out = tmp_path / "dist"
    code, _, err = cli(["run", "analysis=attention_distance", *PCPVT_CLI, *DATA, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    df = pd.read_csv(out / "attention_distance.csv")
    assert set(df.kind) == {"pooled", "global"} and len(df) == 1 + 2 + 2 + 2  # heads per block
    # the last stage (2x2 grid, 32 px cells, no reduction) is bounded by the grid's diameter
    assert (df.mean_distance > 0).all() and (df[df.grid == "2x2"].mean_distance <= 32 * math.sqrt(2) + 1e-9).all()
    roll = tmp_path / "roll"
    code, _, err = cli(["run", "analysis=attention_rollout", *PCPVT_CLI, *DATA, f"hydra.run.dir={roll}"], capsys)
    assert code == 0, err
    r = pd.read_csv(roll / "attention_rollout.csv")
    assert (r.grid == "16x16").all() and r.composition.str.startswith("windows and stages").all()
    np.testing.assert_allclose(
        r.patch_mass, 1.0, rtol=1e-6
    )  # no prefix tokens: the pooling matrices keep all mass (float32 rows)


def test_rollout_refuses_two_token_sets_in_one_line(tmp_path, capsys):
    from helpers import cli

    code, _, err = cli(
        [
            "run",
            "analysis=attention_rollout",
            "model.name=tnt_s_patch16_224",
            "model.pretrained=false",
            "model.data.input_size=[3,32,32]",
            "model.kwargs.img_size=32",
            "model.kwargs.patch_size=8",
            "model.kwargs.depth=1",
            *DATA,
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        capsys,
    )
    assert code != 0 and "pixel and patch tokens" in err and len(err.strip().splitlines()) == 1, err
