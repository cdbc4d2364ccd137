"""What the tests share: tiny model and data overrides, running `vitstudy` in-process, the one-line-error check,
and CKA written out from its formula in float64 numpy (the independent reference the numbers are held against)."""

import os

import numpy as np

from vitstudy.cli import main

# Small variants of real timm architectures: same module structure, 32-64 px inputs.
TINY_VIT = [
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.kwargs.img_size=32",
    "model.kwargs.patch_size=8",
    "model.kwargs.depth=3",
]
TINY_RESNET = ["reference.name=resnet18", "reference.pretrained=false", "reference.data.input_size=[3,32,32]"]
SMALL_DATA = ["dataset=synthetic", "dataset.num_images=24", "dataset.batch_size=8", "dataset.image_size=40"]


def cli(args, capsys):
    """Run `vitstudy ARGS` in this process; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def finished_files(run_dir):
    return (
        [f for f in os.listdir(run_dir) if f.endswith((".csv", ".png", ".pdf")) or f == "run.json"]
        if os.path.isdir(run_dir)
        else []
    )


def assert_one_line_error(args, expected, run_dir, capsys):
    """`vitstudy ARGS hydra.run.dir=RUN_DIR` fails: one line naming `expected`, no traceback, nothing finished."""
    code, _, err = cli([*args, f"hydra.run.dir={run_dir}"], capsys)
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("vitstudy: error:"), err
    assert expected in lines[0] and "Traceback" not in err
    assert finished_files(run_dir) == []
    return code


def song_hsic(k, l):
    """Song et al. (2012) unbiased HSIC, written out from the formula in float64."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def song_cka(x, y):
    k, l = x @ x.T, y @ y.T
    return song_hsic(k, l) / np.sqrt(song_hsic(k, k) * song_hsic(l, l))


def minibatch_reference(xs, ys):
    """Nguyen et al. Eq. 2: average each HSIC term over batches, normalise once; a batch of n images has weight
    n(n - 3) (equal batches: the plain mean of the paper)."""
    w = [len(x) * (len(x) - 3) for x in xs]
    xy = np.average([song_hsic(x @ x.T, y @ y.T) for x, y in zip(xs, ys)], weights=w)
    xx = np.average([song_hsic(x @ x.T, x @ x.T) for x in xs], weights=w)
    yy = np.average([song_hsic(y @ y.T, y @ y.T) for y in ys], weights=w)
    return xy / np.sqrt(xx * yy)
