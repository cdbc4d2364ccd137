"""Every registered analysis, with its own defaults, on a tiny version of the default ViT and of a ResNet: it runs and
leaves a complete run directory, or refuses in one line saying why the model lacks what it needs; and every figure
it draws reads (no overlapping text, no legend over data: vitstudy.plots.layout, tests/test_figure_layout.py)."""

import json

import pytest

from helpers import cli
from vitstudy import analyses
from vitstudy.pipeline import results
from vitstudy.plots.layout import layout_problems

# The default model's architecture (ViT-Ti/16: 3 heads) and the default reference's (ResNet-18), shrunk to 32 px;
# 10 classes so that the synthetic images' labels are the models' classes (hessian, loss_landscape, accuracies).
VIT = [
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.kwargs.img_size=32",
    "model.kwargs.patch_size=8",
    "model.kwargs.depth=2",
    "model.kwargs.num_classes=10",
]
RESNET = [
    "model.name=resnet18",
    "model.pretrained=false",
    "model.data.input_size=[3,32,32]",
    "model.kwargs.num_classes=10",
    "+model.kwargs.zero_init_last=false",
]  # timm zero-inits the last BN: a lesioned block would output a constant
REFERENCE = [
    "reference.name=resnet18",
    "reference.pretrained=false",
    "reference.data.input_size=[3,32,32]",
    "reference.kwargs.num_classes=10",
]
DATA = [
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.num_images=16",
    "dataset.batch_size=8",
    "cache.results=false",
]

# Cost knobs only (how many batches, iterations, images), so the suite stays fast; every structural default is kept.
# `make test-all` also runs every analysis with all its defaults untouched on the ViT (marked slow).
CHEAPER = {
    "hessian": ["analysis.num_batches=1", "analysis.max_iter=5"],
    "loss_landscape": ["analysis.steps=3", "analysis.num_images=16"],
    "linear_probe": ["analysis.num_train=64", "analysis.num_val=32", "analysis.num_test=32"],
    "receptive_field": ["analysis.num_images=4"],
}

# What a CNN lacks: (analysis, words of its one-line refusal)
CNN_REFUSALS = {
    "attention_distance": "no self-attention",
    "attention_rollout": "no self-attention",
    "local_global_cka": "no self-attention",
    "position_embedding": "position embedding",
    "patch_embedding_pca": "patch embedding",
    "token_norms": "token sequence",
    "massive_activations": "token sequence",
}


CASES = [(name, model, False) for name in sorted(analyses.REGISTRY) for model in ("vit", "resnet")]
CASES += [pytest.param(name, "vit", True, marks=pytest.mark.slow) for name in sorted(CHEAPER)]


@pytest.mark.parametrize("name, model, all_defaults", CASES)
def test_every_analysis_runs_with_its_defaults(name, model, all_defaults, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    problems = {}
    write_figure = results.write_figure

    def checked(stem, fig, formats=("png", "pdf")):  # the layout of each figure, checked before it is written
        problems[stem.name] = layout_problems(fig)
        return write_figure(stem, fig, formats)

    monkeypatch.setattr(results, "write_figure", checked)
    extra = (
        ["analysis.models=[vit_tiny,resnet18]", "analysis.pretrained=false"]
        if name in ("cka_grid", "similarity_grid")
        else []
    )
    extra += [] if all_defaults else CHEAPER.get(name, [])
    code, _, err = cli(
        [
            "run",
            f"analysis={name}",
            *(VIT if model == "vit" else RESNET),
            *REFERENCE,
            *DATA,
            *extra,
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    if model == "resnet" and name in CNN_REFUSALS:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and CNN_REFUSALS[name] in lines[0], err
        assert not (out / "run.json").exists()
        return
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["analysis"] == name
    for output in record["outputs"]:
        assert (out / output).stat().st_size > 0, output
    assert (out / f"{name}.csv").is_file()
    unreadable = {k: v for k, v in problems.items() if v}
    assert not unreadable, unreadable
