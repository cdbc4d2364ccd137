"""The paper-figure configs compose, and the stand-in weights builder writes what timm's pretrained loader reads.

Every conf/experiment/*.yaml, every Makefile figure target (its overrides, sweeps expanded) and every model preset
(as model= and as reference=) composes through `vitstudy.compose`, names real timm models / tags and only the
parameters its analysis defines. scripts/standin_weights.py is checked on tiny tags: timm's own
`create_model(name, pretrained=True)`, offline, loads exactly the tensors of the file it wrote.
"""

import sys
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from vitstudy import analyses
from vitstudy.pipeline.models import check_name

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import standin_weights  # noqa: E402
from standin_weights import compose  # noqa: E402  (vitstudy.compose, remembered per override tuple)

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
TARGETS = standin_weights.makefile_runs(REPO / "Makefile")
TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def analysis_keys(name: str) -> set[str]:
    """The parameters an analysis defines: the fields of its Params schema."""
    from dataclasses import fields

    return {f.name for f in fields(analyses.get(name).params)}


def check_composed(cfg) -> None:
    extra = set(cfg.analysis) - analysis_keys(cfg.analysis.name)
    assert not extra, f"analysis.{sorted(extra)} are not parameters of {cfg.analysis.name}"
    analyses.params_of(cfg)  # the values pass the analysis' own checks
    for node in analyses.get(cfg.analysis.name).models(cfg).values():  # model, reference, compare and grid models
        if node.pretrained and not node.checkpoint:
            check_name(node.name)  # a known timm arch.tag (raises VitstudyError otherwise)
        else:
            assert timm.is_model(node.name.split(".")[0]), node.name
    assert cfg.dataset.num_images >= 4 and cfg.dataset.batch_size >= 4


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = compose((f"experiment={experiment}",))
    check_composed(cfg)
    if cfg.dataset.name == "imagefolder":
        assert cfg.dataset.root is None  # the Makefile / command line gives the images


def leaves(node, prefix=""):
    """(dotted key, value) of every scalar in a config tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_values_win_over_the_defaults(experiment):
    """What an experiment file writes is what runs: conf/config.yaml's own keys (layers, tokens) once came after
    the experiment in the defaults list and silently replaced raghu_fig1's layers=all with blocks."""
    written = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml"))
    written.pop("defaults", None)
    written.pop("hydra", None)
    cfg = compose((f"experiment={experiment}",))
    for key, value in leaves(written):
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: resolved in the composed config
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, (
            f"experiment={experiment}: {key} is {got!r} in the composed config, the file says {value!r}"
        )


def test_every_experiment_has_a_make_target():
    used = {o.split("=", 1)[1] for ov in TARGETS.values() for o in ov if o.startswith("experiment=")}
    assert used == set(EXPERIMENTS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_make_target_composes(target):
    """Each job of the target's sweep (model/reference lists expanded) composes and checks out."""
    combos = standin_weights._expand(TARGETS[target])
    assert combos
    for overrides in combos:
        cfg = compose(tuple(overrides))
        check_composed(cfg)
        for key in ("model", "reference"):  # CIFAR targets: $(CIFAR_CKPT)/<preset>/checkpoints/best.pt per preset
            if cfg[key].checkpoint and key in analyses.get(cfg.analysis.name).models(cfg):
                assert cfg[key].checkpoint == f"outputs/train/park_kim/{cfg[key].name}/checkpoints/best.pt"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("key", ["model", "reference"])
def test_model_preset_composes(preset, key):
    cfg = compose((f"{key}={preset}",))
    node = OmegaConf.load(REPO / "conf" / "model" / f"{preset}.yaml")
    assert cfg[key].name == node.name
    assert cfg[key].pretrained == node.get("pretrained", True)
    if cfg[key].pretrained:
        check_name(cfg[key].name)
        assert "." in cfg[key].name, "pin arch.tag in every pretrained preset"
    else:
        assert timm.is_model(cfg[key].name)


def test_figure_names_cover_every_pretrained_model():
    needed = standin_weights.figure_names()
    assert "vit_huge_patch14_224.orig_in21k" in needed  # raghu_fig3 analysis.compare
    assert {"deit3_large_patch16_224.fb_in1k", "deit3_large_patch16_224.fb_in22k_ft_in1k"} <= set(needed)  # fig4
    assert "make fig-raghu-13" in needed["resnetv2_50x1_bit.goog_in21k_ft_in1k"]  # a Makefile model list
    assert not any(n.endswith("_cifar") for n in needed)  # trained checkpoints, not stand-ins
    for name in needed:
        entry = standin_weights.resolve(name, Path("/nonexistent"), None)
        assert entry.source == "hf-hub" and not entry.skip, (name, entry.skip)
        assert entry.path.name == "model.safetensors"


# ------------------------------------------------------------------------------------ the stand-in weights builder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that timm's downloads read (offline), as HF_HUB_CACHE does in a subprocess."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def standin(args, capsys):
    rc = standin_weights.main(args)
    return rc, capsys.readouterr().out


def test_standin_loads_exactly_through_timm(hub_cache, capsys):
    from safetensors.torch import load_file

    with pytest.raises(Exception):  # nothing there yet: the offline load fails
        timm.create_model(TINY, pretrained=True)
    rc, out = standin([TINY, "--cache", str(hub_cache)], capsys)
    assert rc == 0 and "RANDOM" in out and "wrote" in out
    repo = hub_cache / f"models--timm--{TINY}"
    commit = (repo / "refs" / "main").read_text()
    path = repo / "snapshots" / commit / "model.safetensors"
    saved = load_file(path)
    assert standin_weights.is_standin(path)
    model = timm.create_model(TINY, pretrained=True)  # timm's real path: hf_hub_download -> filter -> strict load
    own = model.state_dict()
    assert set(own) == set(saved)
    for k, v in own.items():
        assert torch.equal(v, saved[k]), k
    torch.manual_seed(123)
    fresh = timm.create_model(TINY, pretrained=False).state_dict()  # the comparison can fail: other random weights
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], own["blocks.0.attn.qkv.weight"])
    # idempotent: a second run keeps the file; --force rewrites it (same seed, same values)
    mtime = path.stat().st_mtime_ns
    rc, out = standin([TINY, "--cache", str(hub_cache)], capsys)
    assert rc == 0 and "exists" in out and path.stat().st_mtime_ns == mtime
    rc, out = standin([TINY, "--cache", str(hub_cache), "--force", "--dtype", "float16"], capsys)
    assert rc == 0 and "wrote" in out and load_file(path)["pos_embed"].dtype == torch.float16
    loaded = timm.create_model(TINY, pretrained=True).state_dict()
    assert loaded["pos_embed"].dtype == torch.float32
    assert torch.equal(loaded["pos_embed"], load_file(path)["pos_embed"].float())
    # --remove deletes it, and timm no longer finds weights
    rc, out = standin([TINY, "--cache", str(hub_cache), "--remove"], capsys)
    assert rc == 0 and not repo.exists()


@pytest.mark.parametrize("name, classes", [("vit_tiny_patch16_224.augreg_in21k", 21843), ("convnextv2_atto.fcmae", 0)])
def test_standin_has_the_tags_head(hub_cache, capsys, name, classes):
    """An in21k tag has 21,843 classes, a self-supervised tag no head: the strict load checks those shapes."""
    rc, out = standin([name, "--cache", str(hub_cache), "--verify"], capsys)
    assert rc == 0 and "loaded exactly" in out
    model = timm.create_model(name, pretrained=True)
    assert model.num_classes == classes
    if classes:
        assert model.get_classifier().weight.shape[0] == classes


def test_standin_never_touches_real_weights(hub_cache, capsys):
    """An entry that is not a stand-in (no marker in its metadata) is kept, even with --force or --remove."""
    from safetensors.torch import save_file

    repo = hub_cache / f"models--timm--{TINY}"
    real = repo / "snapshots" / ("a" * 40) / "model.safetensors"
    real.parent.mkdir(parents=True)
    save_file({"x": torch.zeros(2)}, str(real))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for extra in ([], ["--force"], ["--remove"]):
        rc, out = standin([TINY, "--cache", str(hub_cache), *extra], capsys)
        assert rc == 0 and real.is_file() and (extra == ["--remove"] or "left alone" in out)
    assert list((repo / "snapshots").iterdir()) == [real.parent]


def test_standin_reports_names_it_cannot_write(tmp_path, capsys):
    rc, out = standin(["gcvit_tiny.in1k", "vit_ti_cifar", "no_such_model", "--cache", str(tmp_path)], capsys)
    assert rc == 0
    assert "skip   gcvit_tiny.in1k: no hf_hub_id" in out  # a URL-only tag without --torch-hub
    assert "skip   vit_ti_cifar: no downloadable weights" in out
    assert "skip   no_such_model: not a timm model name" in out
    other = standin_weights.resolve("cspnext_s.rsb_a1_in1k", tmp_path, None)  # a tag in a non-timm/ repo
    assert other.source == "hf-hub" and not other.where.startswith("timm/")
    assert other.path.parent.parent.parent.name == "models--" + other.where.replace("/", "--")
    assert not any(tmp_path.iterdir())
