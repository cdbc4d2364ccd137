"""The bundled demo: trained CIFAR-10 weights load offline through timm's pretrained path and reproduce the
predictions recorded when they were packaged (computed there without timm's loader or vitstudy's transform);
`vitstudy demo` prints findings read from the CSVs it wrote."""

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch

from helpers import cli
from vitstudy import demo
from vitstudy.pipeline import data, models
from vitstudy.zoo.cifar import WEIGHTS

MANIFEST = json.loads((WEIGHTS / "demo.json").read_text())
PRESETS = {"vit_mini_cifar": "vit_cifar10_demo", "resnet_mini_cifar": "resnet_cifar10_demo"}


def test_bundled_sample_is_class_balanced():
    from vitstudy.api import compose

    ds = data.build_dataset(compose(["dataset=cifar10_sample"]).dataset)
    labels = data.labels(ds)
    assert len(ds) == MANIFEST["sample"]["images"] == 1000
    assert (
        ds.classes[:3] == ["airplane", "automobile", "bird"] and (torch.bincount(torch.as_tensor(labels)) == 100).all()
    )


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_packaged_weights_load_offline_and_reproduce_recorded_predictions(arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = MANIFEST["models"][arch]
    path = WEIGHTS / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    node = models.node(PRESETS[arch])
    assert node.pretrained is True and not node.checkpoint
    m = models.load(node, "model")  # timm.create_model(arch.demo_cifar10, pretrained=True): the tag's local `file`
    assert m.weights == f"timm:{arch}.demo_cifar10" and tuple(m.data_config["input_size"]) == (3, 32, 32)
    ds = data.ImageFiles(str(data.CIFAR10_SAMPLE))
    preds = []
    with torch.inference_mode():
        for i in range(0, len(ds), 250):
            x = torch.stack([m.transform(ds[j][0]) for j in range(i, min(i + 250, len(ds)))])
            preds += m.module(x).argmax(1).tolist()
    assert "".join(map(str, preds)) == entry["sample_predictions"]  # every image, not only the accuracy
    labels = data.labels(ds).tolist()
    assert sum(p == y for p, y in zip(preds, labels)) == entry["sample_correct"]


def test_demo_prints_findings_read_from_its_csvs(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = cli(["demo", "--out", str(out), "dataset.num_images=200", "cache.dir="], capsys)
    assert code in (0, None), err
    lines = [l for l in stdout.splitlines() if l.startswith("  - ")]
    assert len(lines) == 3
    vit = pd.read_csv(out / "cka_within_vit" / "cka_within.csv")
    res = pd.read_csv(out / "cka_within_resnet" / "cka_within.csv")
    first_last = lambda df: df[(df.index_x == 0) & (df.index_y == df.index_x.max())].cka.item()
    assert f"ViT {first_last(vit):.2f}" in lines[0] and f"ResNet {first_last(res):.2f}" in lines[0]
    across = pd.read_csv(out / "cka_across" / "cka_across.csv")
    last = across[across.index_x == across.index_x.max()]
    assert f"CKA {last.cka.max():.2f}" in lines[1] and last.loc[last.cka.idxmax(), "layer_y"] in lines[1]
    assert across.num_images.unique().tolist() == [200]
    # change one number in a CSV: the printed finding follows it (nothing is remembered or hard-coded)
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    vit.loc[(vit.index_x == 0) & (vit.index_y == vit.index_x.max()), "cka"] = 0.123
    vit.to_csv(changed / "cka_within_vit" / "cka_within.csv", index=False)
    assert "ViT 0.12 " in demo.findings(changed)[0]
