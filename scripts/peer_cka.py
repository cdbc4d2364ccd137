"""Adapters computing a layer-by-layer linear CKA matrix with two peer tools.

Install (into the project venv; torch/torchvision/numpy untouched):
    .venv/bin/pip install --no-deps torch-cka==0.21 pytorch-cka==1.1.3
`pip check` is then clean: torch-cka declares no dependencies (it imports torch,
tqdm, matplotlib), pytorch-cka declares matplotlib>=3.5, numpy>=1.21,
torch>=2.0, tqdm>=4.60, all already present, so nothing else is installed.
Import names: `torch_cka` (torch-cka) and `cka` (pytorch-cka).

What they compute (read from their 0.21 / 1.1.3 sources):
- Both: linear Gram K = X X^T of the hooked module output after `flatten(1)`
  (ViT (B,T,D) -> B x T*D, all tokens incl. CLS, no pooling; CNN (B,C,H,W) ->
  B x C*H*W); unbiased HSIC (Song et al. 2012 / Nguyen et al. 2020 eq. 3) per
  minibatch, accumulated over ALL batches (torch-cka: mean with weight
  1/num_batches each; pytorch-cka: sum), CKA = HSIC_xy / sqrt(HSIC_xx HSIC_yy).
  Everything in float32 (model dtype, float32 accumulators): on the random-init
  ViT-tiny/ResNet-18 trial this is off the float64 value by up to 0.009
  (torch-cka) / 0.004 (pytorch-cka) absolute, from cancellation in the HSIC terms.
- torch-cka: fill_diagonal_(0); one HSIC per pair, 3 `.item()` syncs each;
  no clamp (asserts no NaN); float64 models crash (float32 `ones`); no no_grad
  and non-detached hook outputs (graphs kept: this adapter disables grad by
  default); hooks never removed (this adapter removes them); rows follow hook
  FIRING order while export() names follow named_modules() order; unknown or
  unused layers give zero rows -> NaN assert. compare() ignores loader labels.
- pytorch-cka: diagonals removed algebraically, all pairs vectorised (einsum)
  under inference_mode; denominator clamped >= 0 (0 -> 1e-6) and CKA clamped
  to [0, 1]; rows in requested order (duplicates dropped); raises on unknown
  names and on any batch of <= 3 samples; tuple outputs -> element 0; on CUDA
  the two models run on two side streams; restores train/eval mode on exit.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def _check_layers(model: nn.Module, layers, which: str) -> dict[str, nn.Module]:
    names = dict(model.named_modules())
    missing = [name for name in layers if name not in names]
    if missing:
        raise ValueError(f"{which}: layer(s) {missing} not in model.named_modules()")
    return {name: names[name] for name in layers}


def _unique(layers) -> list[str]:
    return list(dict.fromkeys(layers))


def _regather(matrix: np.ndarray, got1, got2, layers1, layers2, tool: str) -> np.ndarray:
    """Rows/cols of `matrix` are named got1/got2; return them in the requested order."""
    for got, want, which in ((got1, layers1, "model1"), (got2, layers2, "model2")):
        lost = [name for name in want if name not in got]
        if lost:
            raise RuntimeError(
                f"{tool} returned no result for {which} layer(s) {lost} "
                f"(got {list(got)}); was the module run in the forward pass?"
            )
    rows = [list(got1).index(name) for name in layers1]
    cols = [list(got2).index(name) for name in layers2]
    return np.asarray(matrix, dtype=np.float64)[np.ix_(rows, cols)]


@contextmanager
def _drop_new_hooks(modules):
    """Remove the forward hooks that a tool adds and never removes."""
    before = {id(m): set(m._forward_hooks) for m in modules}
    try:
        yield
    finally:
        for m in modules:
            for key in set(m._forward_hooks) - before[id(m)]:
                del m._forward_hooks[key]


def torch_cka_matrix(
    model1,
    model2,
    loader,
    layers1: list[str],
    layers2: list[str],
    device="cpu",
    *,
    no_grad: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Linear minibatch CKA with torch-cka 0.21 (`from torch_cka import CKA`).

    Returns a float64 array of shape (len(layers1), len(layers2)) in the requested
    order. `no_grad=False` reproduces plain README usage (autograd graphs kept).
    """
    import torch_cka.cka as torch_cka_module
    from torch_cka import CKA

    want1, want2 = _unique(layers1), _unique(layers2)
    mods1 = _check_layers(model1, want1, "model1")
    mods2 = _check_layers(model2, want2, "model2")
    model1.eval()
    model2.eval()

    saved_tqdm = torch_cka_module.tqdm
    if not progress:
        torch_cka_module.tqdm = lambda iterable, **_: iterable
    try:
        with _drop_new_hooks([*mods1.values(), *mods2.values()]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Dataloader for Model 2 is not given")
            warnings.filterwarnings("ignore", message="Both model have identical names")
            cka = CKA(
                model1,
                model2,
                model1_name="model1",
                model2_name="model2",
                model1_layers=want1,
                model2_layers=want2,
                device=device,
            )
            with torch.set_grad_enabled(not no_grad):
                try:
                    cka.compare(loader)
                except AssertionError as err:  # its NaN check, e.g. a layer that never ran
                    raise RuntimeError(
                        f"torch-cka failed: {err}; fired layers: "
                        f"{list(cka.model1_features)} x {list(cka.model2_features)}"
                    ) from err
            result = cka.export()
            # The matrix rows/cols follow the hook firing order of the last batch,
            # not result["model1_layers"] (named_modules order).
            got1 = list(cka.model1_features.keys())
            got2 = list(cka.model2_features.keys())
            cka.model1_features, cka.model2_features = {}, {}
    finally:
        torch_cka_module.tqdm = saved_tqdm
    matrix = result["CKA"].detach().cpu().numpy()
    if matrix.shape != (len(want1), len(want2)) or len(got1) != len(want1) or len(got2) != len(want2):
        raise RuntimeError(f"torch-cka: matrix {matrix.shape} for layers {got1} x {got2}, requested {want1} x {want2}")
    return _regather(matrix, got1, got2, layers1, layers2, "torch-cka")


def pytorch_cka_matrix(model1, model2, loader, layers1, layers2, device="cpu", *, progress: bool = False) -> np.ndarray:
    """Linear minibatch CKA with pytorch-cka 1.1.3 (`from cka import compute_cka`).

    Returns a float64 array of shape (len(layers1), len(layers2)) in the requested
    order. Note the tool clamps the result to [0, 1].
    """
    from cka import compute_cka

    want1, want2 = _unique(layers1), _unique(layers2)
    _check_layers(model1, want1, "model1")
    _check_layers(model2, want2, "model2")
    model1.eval()
    model2.eval()
    (matrix,) = compute_cka(model1, model2, loader, layers=want1, model2_layers=want2, device=device, progress=progress)
    model1.eval()  # compute_cka restores the previous mode on exit
    model2.eval()
    return _regather(matrix.detach().cpu().numpy(), want1, want2, layers1, layers2, "pytorch-cka")


if __name__ == "__main__":
    import timm
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    cnn = timm.create_model("resnet18", pretrained=False)
    data = TensorDataset(torch.randn(64, 3, 224, 224), torch.zeros(64, dtype=torch.long))
    loader = DataLoader(data, batch_size=32, shuffle=False)
    l1, l2 = ["blocks.0", "blocks.5", "blocks.11"], ["layer1.0", "layer3.1", "layer4.1"]
    np.set_printoptions(precision=5, suppress=True)
    for fn in (torch_cka_matrix, pytorch_cka_matrix):
        t0 = time.perf_counter()
        m = fn(vit, cnn, loader, l1, l2)
        print(f"{fn.__name__}: {time.perf_counter() - t0:.2f} s\n{m}")
