"""Training figures: the learning curve of `vitstudy train` (loss and accuracy per epoch)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from . import sns  # noqa: F401  (Agg backend and theme)


def learning_curve(df: pd.DataFrame, title: str):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(df.epoch, df.train_loss, marker="o", label="train (augmented)")
    ax1.plot(df.epoch, df.val_loss, marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2.plot(df.epoch, 100 * df.train_acc, marker="o", label="train (augmented)")
    ax2.plot(df.epoch, 100 * df.val_top1, marker="o", label="validation top-1")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax1, ax2):
        ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
