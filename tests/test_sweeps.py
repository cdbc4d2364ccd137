"""Sweeps: launchers, result cache, resume after kill -9, failed jobs, `vitstudy collect`, cka_grid."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli

VITSTUDY = os.path.join(os.path.dirname(sys.executable), "vitstudy")
ACROSS = ["analysis=cka_across", *TINY_VIT, *TINY_RESNET, *SMALL_DATA]


def statuses(sweep: Path) -> list[str]:
    return sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/run.json"))


def test_local_launcher_sweep_is_collected_then_fully_cached(tmp_path, capsys):
    """2 x 2 sweep through submitit's local executor (the cluster path: pickled jobs, per-job logs)."""
    cache = tmp_path / "cache"
    args = [
        "run",
        "-m",
        *ACROSS,
        "model.kwargs.depth=2,3",
        "reference.name=resnet18,resnet10t",
        "hydra/launcher=local",
        f"cache.dir={cache}",
    ]
    code, _, err = cli([*args, f"hydra.sweep.dir={tmp_path / 'a'}"], capsys)
    assert code == 0, err
    assert statuses(tmp_path / "a") == ["complete"] * 4
    assert list((tmp_path / "a" / ".submitit").rglob("*.out"))  # submitit's per-job logs
    code, out, err = cli(["collect", str(tmp_path / "a")], capsys)
    assert code == 0, err
    summary = tmp_path / "a" / "summary"
    df = pd.read_csv(summary / "cka_across.csv")
    assert len(df) == (2 + 3) * (8 + 4) and {"model.kwargs.depth", "reference.name"} <= set(df.columns)
    assert (summary / "cka_across_grid.png").stat().st_size > 0
    html = (summary / "index.html").read_text()
    assert (
        html.count("<img src='index_files/") == 5 and "Failed and missing jobs" in html
    )  # the grid and each run's figure
    # the same sweep again (in-process launcher: the cache does not depend on it): all cached, same numbers
    code, _, err = cli([*[a for a in args if a != "hydra/launcher=local"], f"hydra.sweep.dir={tmp_path / 'b'}"], capsys)
    assert code == 0, err
    assert statuses(tmp_path / "b") == ["cached"] * 4
    a = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "a").glob("[0-9]*/cka_across.csv"))])
    b = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "b").glob("[0-9]*/cka_across.csv"))])
    assert np.array_equal(a.cka.to_numpy(), b.cka.to_numpy())


def test_force_recomputes(tmp_path, capsys):
    args = ["run", *ACROSS, f"cache.dir={tmp_path / 'cache'}"]
    assert cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], capsys)[0] == 0
    assert cli([*args, f"hydra.run.dir={tmp_path / 'b'}"], capsys)[1].count("cached") == 1
    assert cli([*args, "force=true", f"hydra.run.dir={tmp_path / 'c'}"], capsys)[0] == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["status"] == "complete"


def test_failing_job_leaves_the_others_and_is_listed(tmp_path, capsys):
    code, _, err = cli(["run", "-m", *ACROSS, "dataset.num_images=3,16", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 1 and "1 job(s) failed" in err
    assert (tmp_path / "1" / "cka_across.csv").is_file() and not (tmp_path / "0" / "cka_across.csv").exists()
    cli(["collect", str(tmp_path)], capsys)
    failed = pd.read_csv(tmp_path / "summary" / "failed.csv")
    assert len(failed) == 1 and "too few" in failed.error[0] and "num_images=3" in failed.overrides[0]


def test_sweep_rerun_in_place_recomputes_only_failed_jobs(tmp_path, capsys):
    """`make fig-raghu-2` twice: finished jobs are reported cached and left untouched; the failed one runs again."""
    args = [
        "run",
        "-m",
        *ACROSS,
        "dataset.num_images=3,16",
        f"cache.dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 's'}",
    ]
    assert cli(args, capsys)[0] == 1
    done = tmp_path / "s" / "1"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.iterdir() if p.is_file()}
    failed_before = (tmp_path / "s" / "0" / "failed.json").stat().st_mtime_ns
    time.sleep(0.05)
    code, out, err = cli(args, capsys)
    assert code == 1 and "1 job(s) failed" in err
    assert "cka_across cached" in out and out.count("cached") == 1
    assert {
        p.name: p.stat().st_mtime_ns for p in done.iterdir() if p.is_file()
    } == stamps  # not recomputed, not rewritten
    assert json.loads((done / "run.json").read_text())["status"] == "complete"
    assert (tmp_path / "s" / "0" / "failed.json").stat().st_mtime_ns > failed_before  # the failed job ran again


def test_killed_job_resumes_from_its_checkpoint_and_matches(tmp_path):
    """kill -9 after the first reducer checkpoint; the rerun continues and equals an uninterrupted run."""
    args = [
        "run",
        "analysis=cka_within",
        "model.name=vit_tiny_patch16_224",
        "model.pretrained=false",
        "model.kwargs.depth=4",
        "dataset.num_images=320",
        "dataset.batch_size=8",
        "dataset.image_size=64",
        "cache.checkpoint_every=1",
        "layers=all",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    partial = tmp_path / "cache" / "partial"
    proc = subprocess.Popen(
        [VITSTUDY, *args, f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'killed'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(partial.glob("*.pt")) and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("*.pt")), "no checkpoint was written before the kill"
    assert not (tmp_path / "killed" / "run.json").exists()
    subprocess.run(
        [VITSTUDY, *args, f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'resumed'}"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [VITSTUDY, *args, f"cache.dir={tmp_path / 'fresh'}", f"hydra.run.dir={tmp_path / 'whole'}"],
        env=env,
        check=True,
        capture_output=True,
    )
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert record["images"][0]["resumed_at_batch"] > 0
    resumed = pd.read_csv(tmp_path / "resumed" / "cka_within.csv")
    whole = pd.read_csv(tmp_path / "whole" / "cka_within.csv")
    for column in ("cka", "cka_se", "cka_ci_low", "cka_ci_high"):  # the checkpoint carries the per-batch terms
        np.testing.assert_allclose(resumed[column], whole[column], rtol=0, atol=1e-12)
    assert not list(partial.glob("*.pt"))  # a finished run clears its checkpoint


def test_cka_grid_equals_pairwise_cka_across(tmp_path, capsys):
    common = ["dataset.num_images=16", "dataset.batch_size=8", "dataset.image_size=32", "force=true"]
    code, _, err = cli(
        [
            "run",
            "analysis=cka_grid",
            "analysis.models=[vit_tiny,resnet18,deit_s]",
            "analysis.pretrained=false",
            *common,
            f"hydra.run.dir={tmp_path / 'grid'}",
        ],
        capsys,
    )
    assert code == 0, err
    grid = pd.read_csv(tmp_path / "grid" / "cka_grid.csv")
    assert set(zip(grid.model_x.str.split(".").str[0], grid.model_y.str.split(".").str[0])) >= {
        ("vit_tiny_patch16_224", "resnet18"),
        ("resnet18", "deit_small_patch16_224"),
    }
    code, _, err = cli(
        [
            "run",
            "analysis=cka_across",
            "model=vit_tiny",
            "reference=resnet18",
            "model.pretrained=false",
            "reference.pretrained=false",
            *common,
            f"hydra.run.dir={tmp_path / 'pair'}",
        ],
        capsys,
    )
    assert code == 0, err
    pair = pd.read_csv(tmp_path / "pair" / "cka_across.csv")
    sub = grid[(grid.model_x == pair.model_x[0]) & (grid.model_y == pair.model_y[0])].reset_index(drop=True)
    np.testing.assert_allclose(sub.cka.to_numpy(), pair.cka.to_numpy(), atol=1e-12)
    assert (tmp_path / "grid" / "cka_grid.png").stat().st_size > 0


def test_cka_grid_of_two_models_equals_cka_across_and_within(tmp_path, capsys):
    common = ["dataset.num_images=16", "dataset.batch_size=8", "dataset.image_size=32", "force=true"]
    code, _, err = cli(
        [
            "run",
            "analysis=cka_grid",
            "analysis.models=[vit_tiny,resnet18]",
            "analysis.pretrained=false",
            *common,
            f"hydra.run.dir={tmp_path / 'grid'}",
        ],
        capsys,
    )
    assert code == 0, err
    grid = pd.read_csv(tmp_path / "grid" / "cka_grid.csv")
    assert len(grid.groupby(["model_x", "model_y"])) == 3  # vit-vit, vit-resnet, resnet-resnet
    for analysis, extra in (("cka_across", ["reference=resnet18", "reference.pretrained=false"]), ("cka_within", [])):
        code, _, err = cli(
            [
                "run",
                f"analysis={analysis}",
                "model=vit_tiny",
                "model.pretrained=false",
                *extra,
                *common,
                f"hydra.run.dir={tmp_path / analysis}",
            ],
            capsys,
        )
        assert code == 0, err
        pair = pd.read_csv(tmp_path / analysis / f"{analysis}.csv")
        sub = grid[(grid.model_x == pair.model_x[0]) & (grid.model_y == pair.model_y[0])].reset_index(drop=True)
        np.testing.assert_allclose(sub.cka.to_numpy(), pair.cka.to_numpy(), atol=1e-12)


def test_cka_grid_needs_two_models(tmp_path, capsys):
    code, _, err = cli(
        [
            "run",
            "analysis=cka_grid",
            "analysis.models=[vit_tiny]",
            "analysis.pretrained=false",
            f"hydra.run.dir={tmp_path}",
        ],
        capsys,
    )
    assert code == 2 and "at least 2 distinct models" in err


def test_collect_bad_input(tmp_path, capsys):
    code, _, err = cli(["collect", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a directory" in err
    code, _, err = cli(["collect", str(tmp_path)], capsys)
    assert code == 2 and "no run directories" in err


def test_feature_cache_serves_a_second_run_without_forward_passes(tmp_path, tiny_vit):
    """Same model and images: the second pass reads every tensor from disk, runs no forward, same sums."""
    from omegaconf import OmegaConf

    from vitstudy.analyses.cka import CKAReducer
    from vitstudy.pipeline import data
    from vitstudy.pipeline.engine import FeatureSource, stream
    from vitstudy.pipeline.features import FeatureCache
    from vitstudy.pipeline.layers import resolve
    from vitstudy.pipeline.models import LoadedModel, eval_transform

    transform, dcfg = eval_transform(tiny_vit, kwargs={"img_size": 32})
    m = LoadedModel(
        key="model",
        name="vit",
        label="vit",
        module=tiny_vit,
        transform=transform,
        data_config=dcfg,
        weights="random-init",
    )
    layers = [resolve(tiny_vit, "all", (3, 32, 32))]
    base = data.SyntheticImages(100, 40)
    batching = data.make_batches(data.sample_indices(100, 24, 0), 8)
    cache = FeatureCache(tmp_path / "features", max_gb=1)
    ns = cache.namespace(m, OmegaConf.create({"name": "synthetic", "size": 100, "image_size": 40}))
    source = FeatureSource(cache=cache, namespaces=[ns], batches=batching.batches)
    calls = []
    handle = tiny_vit.register_forward_pre_hook(lambda mod, args: calls.append(1))
    results = []
    for _ in range(2):
        reducer = CKAReducer([m], layers, "flatten")
        stream([m], layers, data.loader(base, batching, [transform]), reducer, "cpu", features=source)
        results.append(reducer.result())
    handle.remove()
    assert len(calls) == 3  # three batches in the first pass, none in the second
    np.testing.assert_array_equal(results[0], results[1])
    assert len(list((tmp_path / "features" / ns).glob("*.pt"))) == 24
    FeatureCache(tmp_path / "features", max_gb=1e-9).prune()  # over the limit: least recently used go first
    assert not list((tmp_path / "features").rglob("*.pt"))


def test_api_run_returns_tables_for_a_cached_result(tmp_path):
    import vitstudy

    args = [*ACROSS, f"cache.dir={tmp_path / 'cache'}"]
    first = vitstudy.run(args, out_dir=tmp_path / "a", progress=False)
    again = vitstudy.run(args, out_dir=tmp_path / "b", progress=False)
    assert again.info.get("cached") and again.tables["cka_across"].equals(
        pd.read_csv(tmp_path / "a" / "cka_across.csv")
    )
    assert len(first.tables["cka_across"]) == 3 * 8


def test_weights_id_follows_the_cached_hub_snapshot(tmp_path, monkeypatch):
    """Results computed with other weights under the same timm tag (e.g. a dry run's stand-ins) are not 'cached'."""
    import huggingface_hub.constants as hub
    from omegaconf import OmegaConf

    from vitstudy.pipeline.cache import weights_id

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    node = OmegaConf.create(
        {"name": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "pretrained": True, "checkpoint": None}
    )
    assert weights_id(node) == "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # not downloaded yet
    ids = []
    for revision in ("a" * 40, "b" * 40):
        repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        (repo / "snapshots" / revision).mkdir(parents=True)
        (repo / "snapshots" / revision / "model.safetensors").write_bytes(b"x")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        ids.append(weights_id(node))
    assert ids == [
        f"timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k@{'a' * 40}",
        f"timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k@{'b' * 40}",
    ]


def test_finished_run_clears_a_half_written_checkpoint(tmp_path):
    """A kill -9 during a checkpoint write leaves `.<name>.<random>.tmp.pt`; finishing the key removes it too."""
    from vitstudy.pipeline.cache import Cache

    cache = Cache(tmp_path, "abc123")
    cache.save_checkpoint({"batch": 1})
    leftover = cache.checkpoint_path.parent / f".{cache.checkpoint_path.name}.x1y2z3.tmp.pt"
    leftover.write_bytes(b"half")
    other = cache.checkpoint_path.parent / "other.pt"
    other.write_bytes(b"another key's checkpoint")
    cache.clear_checkpoint()
    assert sorted(p.name for p in cache.checkpoint_path.parent.iterdir()) == ["other.pt"]


def test_results_are_written_with_the_users_umask(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the finished file gets the mode any file of the user gets."""
    old = os.umask(0o022)
    try:
        import importlib

        import vitstudy.pipeline.results as results

        importlib.reload(results)
        results.write_text(tmp_path / "a.csv", "x\n")
        assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
