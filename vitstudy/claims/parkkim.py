"""Park & Kim 2022, "How Do Vision Transformers Work?": the findings of the figure targets
(conf/experiment/parkkim_*.yaml) as claims. The fourier, feature-variance and frequency-noise tables hold the
model and its reference in one table (column `name`)."""

from __future__ import annotations

from .core import Claim, Need
from .stats import mean, of_kind, step_change

PAPER = "Park & Kim 2022"


def _highest(df):
    """Rows at each latent's highest frequency."""
    return df.k == df.groupby(["name", "latent"]).k.transform("max")


def _msa_high(t):
    """Mean change of the highest-frequency Δ log amplitude across the ViT's MSA sublayers (latent kind
    'attention': the output of an attention sublayer after its residual addition)."""
    vit = of_kind("name", "vit")
    return step_change(t, "run", "attention", lambda df: vit(df) & _highest(df))


def _conv_vs_msa(t):
    """Highest-frequency Δ log amplitude averaged over the latter half of each network: ResNet minus ViT."""

    def late(kind):
        sel = of_kind("name", kind)
        return lambda df: sel(df) & _highest(df) & (df.depth >= 0.5)

    return mean(t, "run", late("cnn")) - mean(t, "run", late("vit"))


def _variance(kind):
    vit = of_kind("name", "vit")
    return lambda t: step_change(t, "run", kind, vit, log=True)


def _noise(t):
    """Accuracy drop (points) under the highest-frequency band: ViT minus ResNet (positive: the ViT is hurt less)."""

    def drop(kind):
        sel = of_kind("name", kind)
        return lambda df: sel(df) & (df.band == df[sel(df)].band.max())

    return mean(t, "run", drop("vit")) - mean(t, "run", drop("cnn"))


FIG2A = Claim(
    paper=PAPER,
    figure="Fig. 2a",
    text="Convolutions amplify high frequencies, MSAs do not: ResNet's curves end higher",
    statistic="highest-frequency Δ log amplitude, mean over the latter half of depth, ResNet minus ViT",
    needs={"run": Need("fourier", "vit")},
    compute=_conv_vs_msa,
    threshold=0.0,
    direction=">",
    column="delta_log_amplitude",
)
FIG8 = Claim(
    paper=PAPER,
    figure="Fig. 8",
    text="MSAs decrease the high-frequency amplitude",
    statistic="mean change of the highest-frequency Δ log amplitude across an MSA sublayer",
    needs={"run": Need("fourier", "vit")},
    compute=_msa_high,
    threshold=0.0,
    direction="<",
    column="delta_log_amplitude",
    caveat="only the earliest MSAs behave like convolutions (Park & Kim Fig. 8)",
)
FIG9_MSA = Claim(
    paper=PAPER,
    figure="Fig. 9",
    text="MSAs reduce the feature-map variance",
    statistic="mean change of log feature-map variance across an MSA sublayer (ViT)",
    needs={"run": Need("feature_variance", "vit")},
    compute=_variance("attention"),
    threshold=0.0,
    direction="<",
)
FIG9_MLP = Claim(
    paper=PAPER,
    figure="Fig. 9",
    text="MLPs increase the feature-map variance",
    statistic="mean change of log feature-map variance across an MLP sublayer (ViT)",
    needs={"run": Need("feature_variance", "vit")},
    compute=_variance("mlp"),
    threshold=0.0,
    direction=">",
)
FIG2B = Claim(
    paper=PAPER,
    figure="Fig. 2b",
    text="ViT is robust to high-frequency noise, ResNet is not",
    statistic="accuracy drop under the highest-frequency band, ViT minus ResNet (points)",
    needs={"run": Need("frequency_noise", "vit")},
    compute=_noise,
    threshold=0.0,
    direction=">",
    column="drop",
)


def _edge(df):
    """Grid points on the landscape's edge along the first direction (y = 0), the largest |x|."""
    return (df.y == 0) & (df.x.abs() == df.x.abs().max())


def _centre(df):
    return (df.x == 0) & (df.y == 0)


def _rise(t, role):
    return mean(t, role, _edge) - mean(t, role, _centre)


FIG1A = Claim(
    paper=PAPER,
    figure="Fig. 1a",
    text="ViT has a flatter loss landscape than ResNet",
    statistic="loss rise from the centre to the grid's edge along the first direction, ViT minus ResNet",
    needs={"vit": Need("loss_landscape", "vit"), "cnn": Need("loss_landscape", "cnn")},
    compute=lambda t: _rise(t, "vit") - _rise(t, "cnn"),
    threshold=0.0,
    direction="<",
    column="loss",
)
FIG1C = Claim(
    paper=PAPER,
    figure="Fig. 1c",
    text="ViT's top Hessian eigenvalues are much smaller than ResNet's",
    statistic="mean over mini-batches of the largest Hessian eigenvalue, ViT minus ResNet",
    needs={"vit": Need("hessian", "vit", independent_rows=True), "cnn": Need("hessian", "cnn", independent_rows=True)},
    compute=lambda t: mean(t, "vit", "eigen_index == 0") - mean(t, "cnn", "eigen_index == 0"),
    threshold=0.0,
    direction="<",
    column="eigenvalue",
)
LESION = Claim(
    paper=PAPER,
    figure="lesion figure",
    text="Removing an MSA near the end of a stage hurts accuracy",
    statistic="mean top-1 change (points) when one of the MSAs in the latter half of depth is removed",
    needs={"run": Need("lesion")},
    compute=lambda t: mean(t, "run", "kind == 'attention' and depth >= 0.5"),
    threshold=0.0,
    direction="<",
    column="delta",
    caveat="the paper's periodic pattern (Convs early, MSAs late in each stage) is read from the figure",
)

CLAIMS = {
    "parkkim_fig1a": [FIG1A],
    "parkkim_fig1c": [FIG1C],
    "parkkim_lesion": [LESION],
    "parkkim_fig2a": [FIG2A, FIG8],
    "parkkim_fig8": [FIG8],
    "parkkim_fig9": [FIG9_MSA, FIG9_MLP],
    "parkkim_fig2b": [FIG2B],
}
