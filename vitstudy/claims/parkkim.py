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


FIG2A = Claim(PAPER, "Fig. 2a", "Convolutions amplify high frequencies, MSAs do not: ResNet's curves end higher",
              "highest-frequency Δ log amplitude, mean over the latter half of depth, ResNet minus ViT",
              {"run": Need("fourier", "vit")}, _conv_vs_msa, 0.0, ">", column="delta_log_amplitude")
FIG8 = Claim(PAPER, "Fig. 8", "MSAs decrease the high-frequency amplitude",
             "mean change of the highest-frequency Δ log amplitude across an MSA sublayer",
             {"run": Need("fourier", "vit")}, _msa_high, 0.0, "<", column="delta_log_amplitude",
             caveat="only the earliest MSAs behave like convolutions (Park & Kim Fig. 8)")
FIG9_MSA = Claim(PAPER, "Fig. 9", "MSAs reduce the feature-map variance",
                 "mean change of log feature-map variance across an MSA sublayer (ViT)",
                 {"run": Need("feature_variance", "vit")}, _variance("attention"), 0.0, "<")
FIG9_MLP = Claim(PAPER, "Fig. 9", "MLPs increase the feature-map variance",
                 "mean change of log feature-map variance across an MLP sublayer (ViT)",
                 {"run": Need("feature_variance", "vit")}, _variance("mlp"), 0.0, ">")
FIG2B = Claim(PAPER, "Fig. 2b", "ViT is robust to high-frequency noise, ResNet is not",
              "accuracy drop under the highest-frequency band, ViT minus ResNet (points)",
              {"run": Need("frequency_noise", "vit")}, _noise, 0.0, ">", column="drop")

def _edge(df):
    """Grid points on the landscape's edge along the first direction (y = 0), the largest |x|."""
    return (df.y == 0) & (df.x.abs() == df.x.abs().max())


def _centre(df):
    return (df.x == 0) & (df.y == 0)


def _rise(t, role):
    return mean(t, role, _edge) - mean(t, role, _centre)


FIG1A = Claim(PAPER, "Fig. 1a", "ViT has a flatter loss landscape than ResNet",
              "loss rise from the centre to the grid's edge along the first direction, ViT minus ResNet",
              {"vit": Need("loss_landscape", "vit"), "cnn": Need("loss_landscape", "cnn")},
              lambda t: _rise(t, "vit") - _rise(t, "cnn"), 0.0, "<", column="loss")
FIG1C = Claim(PAPER, "Fig. 1c", "ViT's top Hessian eigenvalues are much smaller than ResNet's",
              "mean over mini-batches of the largest Hessian eigenvalue, ViT minus ResNet",
              {"vit": Need("hessian", "vit", independent_rows=True), "cnn": Need("hessian", "cnn", independent_rows=True)},
              lambda t: mean(t, "vit", "eigen_index == 0") - mean(t, "cnn", "eigen_index == 0"), 0.0, "<",
              column="eigenvalue")
LESION = Claim(PAPER, "lesion figure", "Removing an MSA near the end of a stage hurts accuracy",
               "mean top-1 change (points) when one of the MSAs in the latter half of depth is removed",
               {"run": Need("lesion")}, lambda t: mean(t, "run", "kind == 'attention' and depth >= 0.5"), 0.0, "<",
               column="delta", caveat="the paper's periodic pattern (Convs early, MSAs late in each stage) is read from the figure")

CLAIMS = {
    "parkkim_fig1a": [FIG1A],
    "parkkim_fig1c": [FIG1C],
    "parkkim_lesion": [LESION],
    "parkkim_fig2a": [FIG2A, FIG8],
    "parkkim_fig8": [FIG8],
    "parkkim_fig9": [FIG9_MSA, FIG9_MLP],
    "parkkim_fig2b": [FIG2B],
}
