"""Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural Networks?": the findings of each
figure target (conf/experiment/raghu_fig*.yaml) as claims. One entry of CLAIMS per target; a target may hold
several claims, and a claim may compare the jobs of one target (the ViT against the ResNet of a multirun)."""

from __future__ import annotations

import numpy as np

from .core import Claim, Need
from .stats import far_cka, group_means, mean, quarter, within

PAPER = "Raghu et al. 2021"
DATA_CAVEAT = (
    "depends on training data and scale: trained on less data, ViTs learn fewer local heads in their lower "
    "layers (Raghu et al. Fig. 4 and C.5, experiment raghu_fig4); a small ViT trained on CIFAR-10 alone, like "
    "the bundled one, is such a model, so near-uniform attention there is the paper's finding, not a failure"
)


def _fig1(t, both: bool = False):
    """Mean similarity of the lowest with the highest quarter of layers, ViT minus ResNet (`both`: both
    directions of an asymmetric measure, see stats.far_cka)."""
    return far_cka(t, "vit", both=both) - far_cka(t, "cnn", both=both)


def _fig2_lower(t, where: str | None = None):
    """The ResNet's (y) lower half with the ViT's (x) lowest quarter minus with its highest quarter; `where` selects
    the rows of one direction when the table holds both (asymmetric measures)."""
    df = t.df("across") if where is None else t.df("across").query(where, engine="python")
    nx, ny = int(df.index_x.max()) + 1, int(df.index_y.max()) + 1
    k, half = quarter(nx), ny // 2 or 1
    low = mean(t, "across", within(f"index_y < {half} and index_x < {k}", where))
    high = mean(t, "across", within(f"index_y < {half} and index_x >= {nx - k}", where))
    return low - high


def _fig2_top(t, where: str | None = None):
    """Each ViT layer's best CKA with any ResNet layer: mean over the ViT's final third minus its first two thirds."""
    best = group_means(t, "across", ["index_x", "index_y"], where).groupby(level=0).max()
    nx = int(best.index.max()) + 1
    k = quarter(nx, 1 / 3)
    return float(best[best.index >= nx - k].mean() - best[best.index < nx - k].mean())


def _spread(t, role="vit", where=None):
    """Std over heads of mean attention distance in the first block minus in the last block."""
    df = t.df(role)
    first, last = int(df.block.min()), int(df.block.max())
    sel = (lambda q: f"({where}) and {q}") if where else (lambda q: q)
    return float(np.std(t.values(role, sel(f"block == {first}"))) - np.std(t.values(role, sel(f"block == {last}"))))


def _fig4(t):
    """Mean distance of the lowest two blocks' heads: ImageNet-1k weights minus the same architecture's IN-21k."""
    df = t.df("vit")
    low = sorted(df.block.unique())[:2]
    q = f"block in {[int(b) for b in low]}"
    return mean(t, "vit", f"{q} and model.str.contains('in1k') and not model.str.contains('in21k|in22k')") - mean(
        t, "vit", f"{q} and model.str.contains('in21k|in22k')"
    )


def _fig5(t):
    """CKA of the most local head subset minus the most global one, averaged over the reference layers."""
    df = t.df("vit")
    lo, hi = int(df.subset.min()), int(df.subset.max())
    return mean(t, "vit", f"subset == {lo}") - mean(t, "vit", f"subset == {hi}")


def _skip(t):
    """Mean skip / branch norm ratio over blocks (all tokens), ViT minus ResNet (one run with analysis.reference)."""
    vit = mean(t, "vit", lambda df: (df.model.map(_kind) == "vit") & (df.group == "all"))
    cnn = mean(t, "vit", lambda df: (df.model.map(_kind) == "cnn") & (df.group == "all"))
    return vit - cnn


def _kind(name):
    from .core import kind_of

    return kind_of(str(name))


def _localises(t, role):
    """Mean CKA of a final-block token with its own input patch minus with the other positions."""
    return mean(t, role, "is_self") - mean(t, role, "~is_self")


def _fig13(t):
    """Mean probe accuracy over the layers of the upper half of each network (relative depth >= 0.5), ViT minus
    ResNet; every representation probed (the target probes GAP)."""
    return mean(t, "vit", "depth >= 0.5") - mean(t, "cnn", "depth >= 0.5")


def _fig11(t):
    """Last probed layer: the CLS token's probe accuracy minus the per-token probes' (CLS-trained ViT)."""
    last = float(t.df("vit").depth.max())
    return mean(t, "vit", f"depth == {last} and representation == 'cls'") - mean(
        t, "vit", f"depth == {last} and representation == 'tokens'"
    )


def _fig6(t):
    """Radius (px) holding half of the receptive-field mass after the first block's residual, ViT minus ResNet."""
    first = lambda df: (df.residual == "post") & (df["index"] == df[df.residual == "post"]["index"].min())
    return mean(t, "vit", first) - mean(t, "cnn", first)


def _fig12(t):
    df = t.df("diag")
    n = int(df.index_x.max()) + 1 if "index_x" in df else len(df)
    k = quarter(n)
    return mean(t, "diag", f"index_x < {k}") - mean(t, "diag", f"index_x >= {n - k}")


def _fig8(t):
    return mean(t, "vit", "variant != 'intact'")


FIG1 = Claim(
    paper=PAPER,
    figure="Fig. 1",
    text="ViTs keep more similarity between their lower and higher layers than ResNets",
    statistic="mean CKA between the lowest and highest quarter of layers, ViT minus ResNet",
    needs={"vit": Need("cka_within", "vit"), "cnn": Need("cka_within", "cnn")},
    compute=_fig1,
    threshold=0.0,
    direction=">",
)
FIG2_LOWER = Claim(
    paper=PAPER,
    figure="Fig. 2",
    text="The ResNet's lower half is similar to the ViT's lowest layers, not to its highest",
    statistic="mean CKA of the ResNet's lower half with the ViT's lowest quarter minus with its highest quarter",
    needs={"across": Need("cka_across", "vit")},
    compute=_fig2_lower,
    threshold=0.0,
    direction=">",
)
FIG2_TOP = Claim(
    paper=PAPER,
    figure="Fig. 2",
    text="The final third of the ViT's layers is dissimilar to the ResNet's layers",
    statistic="best CKA of a ViT layer with any ResNet layer, mean over the ViT's final third minus its first two thirds",
    needs={"across": Need("cka_across", "vit")},
    compute=_fig2_top,
    threshold=0.0,
    direction="<",
)
FIG3 = Claim(
    paper=PAPER,
    figure="Fig. 3",
    text="Lower layers mix local and global heads; in the highest layers all heads are global",
    statistic="std over heads of mean attention distance (px): first block minus last block",
    needs={"vit": Need("attention_distance", "vit")},
    compute=_spread,
    threshold=0.0,
    direction=">",
    caveat=DATA_CAVEAT,
)
FIG4 = Claim(
    paper=PAPER,
    figure="Fig. 4",
    text="Trained on ImageNet-1k only, ViTs attend less locally in their lowest layers",
    statistic="mean attention distance (px) of the lowest two blocks' heads: IN-1k weights minus IN-21k weights",
    needs={"vit": Need("attention_distance", "vit")},
    compute=_fig4,
    threshold=0.0,
    direction=">",
    caveat=DATA_CAVEAT,
)
FIG5 = Claim(
    paper=PAPER,
    figure="Fig. 5",
    text="CKA with the ResNet's lowest layers falls as the head subset's attention distance grows",
    statistic="CKA of the most local head subset minus the most global, mean over the reference layers",
    needs={"vit": Need("local_global_cka", "vit")},
    compute=_fig5,
    threshold=0.0,
    direction=">",
    caveat=DATA_CAVEAT,
)
FIG7 = Claim(
    paper=PAPER,
    figure="Fig. 7",
    text="Far more flows through the skip connections in ViT than in ResNet",
    statistic="mean norm ratio ||z|| / ||f(z)|| over blocks (all tokens), ViT minus ResNet",
    needs={"vit": Need("skip_ratio", "vit", table="skip_ratio_summary")},
    compute=_skip,
    threshold=0.0,
    direction=">",
    column="ratio",
)
FIG8 = Claim(
    paper=PAPER,
    figure="Fig. 8",
    text="Without the skip connection of a middle block a ViT loses top-1 accuracy",
    statistic="top-1 change (lesioned minus intact)",
    needs={"vit": Need("skip_ablation", "vit", table="skip_ablation_accuracy")},
    compute=_fig8,
    threshold=0.0,
    direction="<",
    column="top1_change",
    caveat="approximated: the skip is removed at inference, the paper retrains without it",
)
FIG9 = Claim(
    paper=PAPER,
    figure="Fig. 9",
    text="Final-block ViT tokens are most similar to their own input patch",
    statistic="mean CKA of a token with its own patch minus with the other positions",
    needs={"vit": Need("spatial_localization", "vit")},
    compute=lambda t: _localises(t, "vit"),
    threshold=0.0,
    direction=">",
)
FIG9_CNN = Claim(
    paper=PAPER,
    figure="Fig. 9",
    text="ResNet positions are less spatially discriminative than ViT tokens",
    statistic="localisation contrast (own patch minus others, CKA), ViT minus ResNet",
    needs={"vit": Need("spatial_localization", "vit"), "cnn": Need("spatial_localization", "cnn")},
    compute=lambda t: _localises(t, "vit") - _localises(t, "cnn"),
    threshold=0.0,
    direction=">",
)
FIG10 = Claim(
    paper=PAPER,
    figure="Fig. 10",
    text="A GAP-trained ViT localises less in its final block than a CLS-trained one",
    statistic="localisation contrast (own patch minus others, CKA) of the GAP ViT minus the CLS ViT",
    needs={
        "gap": Need("spatial_localization", "vit", name="gap"),
        "cls": Need("spatial_localization", "vit", name="^(?!.*gap)"),
    },
    compute=lambda t: _localises(t, "gap") - _localises(t, "cls"),
    threshold=0.0,
    direction="<",
    caveat="needs a CLS-trained ViT beside the GAP one: vitstudy run -m experiment=raghu_fig10 model=vit_m16_gap,vit_b16",
)
FIG13 = Claim(
    paper=PAPER,
    figure="Fig. 13",
    text="ViTs learn stronger intermediate representations than ResNets (linear probes)",
    statistic="mean test accuracy of the probes of the upper half of layers, ViT minus ResNet",
    needs={"vit": Need("linear_probe", "vit"), "cnn": Need("linear_probe", "cnn")},
    compute=_fig13,
    threshold=0.0,
    direction=">",
    column="accuracy",
    caveat="the paper's models are large and pre-trained on JFT/ImageNet-21k; scale matters (Fig. 13 compares sizes)",
)
FIG11 = Claim(
    paper=PAPER,
    figure="Fig. 11",
    text="Per-token probes do poorly for the spatial tokens of a CLS-trained ViT",
    statistic="test accuracy at the last probed layer: CLS-token probe minus the per-token probes",
    needs={"vit": Need("linear_probe", "vit")},
    compute=_fig11,
    threshold=0.0,
    direction=">",
    column="accuracy",
)
FIG6 = Claim(
    paper=PAPER,
    figure="Fig. 6",
    text="ViT's lower-layer receptive fields are larger than ResNet's",
    statistic="50%-mass radius (px) of the effective receptive field after the first block, ViT minus ResNet",
    needs={"vit": Need("receptive_field", "vit"), "cnn": Need("receptive_field", "cnn")},
    compute=_fig6,
    threshold=0.0,
    direction=">",
    column="radius50_px",
)
FIG12 = Claim(
    paper=PAPER,
    figure="Fig. 12",
    text="With less pre-training data the lower layers still match, the higher layers do not",
    statistic="per-block CKA (less vs more data): lowest quarter of blocks minus highest quarter",
    needs={"diag": Need("cka_across", "vit", table="cka_diagonal")},
    compute=_fig12,
    threshold=0.0,
    direction=">",
)

CLAIMS = {
    "raghu_fig1": [FIG1],
    "raghu_fig2": [FIG2_LOWER, FIG2_TOP],
    "raghu_fig3": [FIG3],
    "raghu_fig4": [FIG4],
    "raghu_fig5": [FIG5],
    "raghu_fig6": [FIG6],
    "raghu_fig7": [FIG7],
    "raghu_fig8": [FIG8],
    "raghu_fig9": [FIG9, FIG9_CNN],
    "raghu_fig10": [FIG10],
    "raghu_fig11": [FIG11],
    "raghu_fig12": [FIG12],
    "raghu_fig13": [FIG13],
}
