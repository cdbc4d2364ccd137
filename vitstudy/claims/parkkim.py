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
    """Mean change of the highest-frequency Δ log amplitude across the ViT's MSA sublayers."""
    vit = of_kind("name", "vit")
    return step_change(t, "run", "msa", lambda df: vit(df) & _highest(df))


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
              {"run": Need("fourier", "vit")}, _conv_vs_msa, 0.0, ">")
FIG8 = Claim(PAPER, "Fig. 8", "MSAs decrease the high-frequency amplitude",
             "mean change of the highest-frequency Δ log amplitude across an MSA sublayer",
             {"run": Need("fourier", "vit")}, _msa_high, 0.0, "<",
             caveat="only the earliest MSAs behave like convolutions (Park & Kim Fig. 8)")
FIG9_MSA = Claim(PAPER, "Fig. 9", "MSAs reduce the feature-map variance",
                 "mean change of log feature-map variance across an MSA sublayer (ViT)",
                 {"run": Need("feature_variance", "vit")}, _variance("msa"), 0.0, "<")
FIG9_MLP = Claim(PAPER, "Fig. 9", "MLPs increase the feature-map variance",
                 "mean change of log feature-map variance across an MLP sublayer (ViT)",
                 {"run": Need("feature_variance", "vit")}, _variance("mlp"), 0.0, ">")
FIG2B = Claim(PAPER, "Fig. 2b", "ViT is robust to high-frequency noise, ResNet is not",
              "accuracy drop under the highest-frequency band, ViT minus ResNet (points)",
              {"run": Need("frequency_noise", "vit")}, _noise, 0.0, ">", column="drop")

CLAIMS = {
    "parkkim_fig2a": [FIG2A, FIG8],
    "parkkim_fig8": [FIG8],
    "parkkim_fig9": [FIG9_MSA, FIG9_MLP],
    "parkkim_fig2b": [FIG2B],
}
