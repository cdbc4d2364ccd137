"""Loss-landscape figures (Park & Kim 2022): the Hessian eigenvalue density (Figs 1c, 4) and loss slices or surfaces
along filter-normalised directions (Fig. 1a)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import sns  # noqa: F401  (Agg backend and theme)


def hessian_density(df, label, summary):
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ev = df.eigenvalue.to_numpy()
    ax.hist(ev, bins=min(40, max(5, len(ev) // 2)), density=True, alpha=0.6, color="C0", label=f"{label}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Hessian eigenvalue (top-%d per batch)" % (df.eigen_index.max() + 1))
    ax.set_ylabel("density")
    ax.set_title(f"NEP {summary['NEP']:.2f}, APE {summary['APE']:.3g}, {df.batch.nunique()} batches", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_surface(df, label, dims):
    if dims == 1:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot(df.x, df.loss, "-o", ms=3, label="NLL + wd·l2")
        ax.plot(df.x, df.nll, "--", label="NLL")
        ax.set_xlabel("step along direction")
        ax.locator_params(axis="x", nbins=5)
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    else:
        xs, ys = np.sort(df.x.unique()), np.sort(df.y.unique())
        z = df.pivot(index="y", columns="x", values="loss").loc[ys, xs].to_numpy()
        z = z - np.nanmin(z)
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
        cs = ax.contour(xs, ys, z, levels=15, cmap="viridis")
        ax.clabel(cs, fontsize=6)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
    ax.set_title(f"{label}: loss landscape ({df.num_images.iloc[0]} images)", fontsize=9)
    fig.tight_layout()
    return fig
