"""The engine's forward passes: stopping after the last tapped layer captures exactly what the full forward does, and
the forward precision (precision=fp32|tf32|bf16|fp16) leaves every statistic in float64."""

import json

import pytest
import timm
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli
from vitstudy.pipeline.engine import Reducer, stream
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


class Keep(Reducer):
    def __init__(self):
        self.got = []

    def on_tensor(self, model_index, layer, tensor):
        self.got.append((layer.name, tensor.clone()))


def test_an_early_stopped_forward_captures_exactly_the_full_forwards_tensors():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4).eval()
    layers = resolve(vit, ["blocks.1", "blocks.0.norm2:in", "blocks.0"], (3, 32, 32))
    calls = []
    vit.norm.register_forward_hook(lambda m, a, o: calls.append("norm"))  # after the last block: skipped when stopping
    m = LoadedModel(
        key="model", name="vit", label="vit", module=vit, transform=None, data_config={}, weights="random-init"
    )
    batches = [((torch.randn(4, 3, 32, 32),), torch.zeros(4)) for _ in range(2)]
    full, early = Keep(), Keep()
    stream([m], [layers], batches, full, torch.device("cpu"), stop_early=False)
    assert calls == ["norm", "norm"] and m.stopped_after is None
    stream([m], [layers], batches, early, torch.device("cpu"))
    assert calls == ["norm", "norm"] and m.stopped_after == "blocks.1"  # no further norm call: stopped at blocks.1
    assert [n for n, _ in early.got] == [n for n, _ in full.got]
    for (_, a), (_, b) in zip(early.got, full.got):
        assert torch.equal(a, b)


def test_run_json_says_where_each_forward_stopped(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=cka_across",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "model.layers=[blocks.0,blocks.1]",
            "reference.layers=[layer1.0]",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    models = json.loads((out / "run.json").read_text())["models"]
    assert models["model"]["forward"] == "stopped after blocks.1"
    assert models["reference"]["forward"] == "stopped after layer1.0"


def test_bf16_forward_runs_end_to_end_and_stays_close(tmp_path, capsys):
    import pandas as pd

    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = cli(
            [
                "run",
                "analysis=cka_across",
                *TINY_VIT,
                *TINY_RESNET,
                *SMALL_DATA,
                f"precision={precision}",
                f"hydra.run.dir={out}",
            ],
            capsys,
        )
        assert code == 0, err
        assert json.loads((out / "run.json").read_text())["config"]["precision"] == precision
        runs[precision] = pd.read_csv(out / "cka_across.csv").cka.to_numpy()
    diff = abs(runs["fp32"] - runs["bf16"]).max()
    assert 0 < diff < 0.05  # bf16 changes the features a little, never the statistics' own precision


def test_precision_checks(tmp_path, capsys):
    code, _, err = cli(
        ["run", "analysis=cka_within", *TINY_VIT, *SMALL_DATA, "precision=fp8", f"hydra.run.dir={tmp_path / 'a'}"],
        capsys,
    )
    assert code == 2 and "precision must be one of fp32, tf32, bf16, fp16" in err and err.count("\n") == 1
    code, _, err = cli(
        [
            "run",
            "analysis=hessian",
            *TINY_VIT,
            *SMALL_DATA,
            "model.kwargs.num_classes=10",
            "precision=bf16",
            f"hydra.run.dir={tmp_path / 'b'}",
        ],
        capsys,
    )
    assert code == 2 and "precision=fp32" in err and err.count("\n") == 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reducers_run_without_autocast(precision):
    """Inside the engine, a reducer's own matmuls stay float32/float64 even under a bf16/fp16 forward."""
    from vitstudy import runtime

    seen = []

    class Dtype(Reducer):
        def on_tensor(self, model_index, layer, tensor):
            seen.append((tensor.dtype, (tensor.float().flatten(1) @ tensor.float().flatten(1).T).dtype))

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    m = LoadedModel(
        key="model", name="vit", label="vit", module=vit, transform=None, data_config={}, weights="random-init"
    )
    with runtime.forward_precision(precision, torch.device("cpu")):
        stream(
            [m],
            [resolve(vit, ["blocks.1.mlp.fc1"], (3, 32, 32))],
            [((torch.randn(4, 3, 32, 32),), torch.zeros(4))],
            Dtype(),
            torch.device("cpu"),
        )
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == [
        (low, torch.float32)
    ]  # a Linear's output came out of the autocast forward; the reducer's product did not


def test_bf16_attention_distance_accepts_rounded_softmax_rows(tmp_path, capsys):
    """A bf16 forward rounds each probability, so rows sum to 1 only to bf16's precision: still measured, and close."""
    import pandas as pd

    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = cli(
            [
                "run",
                "analysis=attention_distance",
                *TINY_VIT,
                *SMALL_DATA,
                f"precision={precision}",
                f"hydra.run.dir={out}",
            ],
            capsys,
        )
        assert code == 0, err
        runs[precision] = pd.read_csv(out / "attention_distance.csv").mean_distance.to_numpy()
    assert abs(runs["fp32"] - runs["bf16"]).max() < 0.05 * runs["fp32"].max()
