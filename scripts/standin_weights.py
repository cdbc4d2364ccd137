#!/usr/bin/env python
"""Stand-in "pretrained" timm weights for dry runs: RANDOM-INIT weights written where timm looks for real ones.

    !!!  The weights this script writes are RANDOM. They exist so that `pretrained=true` can run end to end
    !!!  offline (tests, dry runs of `make figures` before spending GPU hours). Every number and figure made
    !!!  with them is meaningless. Write them into a scratch cache (--cache DIR) and point HF_HUB_CACHE at it
    !!!  only for the dry run; never into a cache that real analyses read (--remove deletes them again).

timm (1.0.31) loads `timm.create_model(NAME, pretrained=True)` from the source its pretrained config names
(`timm.models._builder._resolve_pretrained_source`, which this script asks):
- `hf-hub` (almost every tag): `hf_hub_download(repo_id, filename)` in the Hugging Face cache. timm asks for
  `pytorch_model.bin` unless the config sets `hf_hub_filename`, but first tries its safetensors alternative
  (`model.safetensors`), so that is what is written here:
  `$CACHE/models--<org>--<repo>/refs/main` (a 40-hex revision, no newline) and
  `$CACHE/models--<org>--<repo>/snapshots/<revision>/model.safetensors`. Most repos are `timm/<arch>.<tag>`,
  some tags live in other organisations' repos (handled the same way); an `@revision` in the hub id is honoured.
  No `config.json` is read for plain names (only for `hf-hub:org/repo` model names, which this script does not
  handle). With `HF_HUB_OFFLINE=1` the file is then loaded through timm's real code path (checkpoint filter,
  classifier handling, strict `load_state_dict`).
- `url` (a few tags without `hf_hub_id`): torch.hub's checkpoint folder, `<--torch-hub DIR>/checkpoints/<file>`
  (timm's `load_state_dict_from_url`); written only when --torch-hub is given, skipped otherwise.
- tags whose loader is custom (npz files, `custom_load='hf'` with a hub filename) are skipped and reported.

The state dict is the one `timm.create_model(NAME)` builds for that tag: num_classes (and every other
architecture default) comes from the tag's pretrained config, e.g. 21843 classes for an `in21k` tag and no
head (num_classes=0) for `orig_in21k`, so timm's strict load checks the real shapes. The safetensors metadata
carries `vitstudy_standin=random-init` (that is how --force and --remove recognise stand-ins: an entry that is not
one, e.g. real downloaded weights, is never touched).

Usage:
    python scripts/standin_weights.py --all-figures --cache /tmp/standin-hf        # what `make figures` needs
    python scripts/standin_weights.py vit_tiny_patch16_224.augreg_in21k_ft_in1k --cache DIR --verify
    python scripts/standin_weights.py --all-figures --list                          # names only, nothing written
    HF_HUB_CACHE=/tmp/standin-hf HF_HUB_OFFLINE=1 vitstudy run ...                  # use them (dry runs only)
The default cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (a loud warning is printed:
prefer --cache DIR).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
WARNING = (
    "WARNING: stand-in weights are RANDOM (random init, not trained): for dry runs and tests only; "
    "every result computed with them is meaningless"
)
MARKER_KEY, MARKER_VALUE = "vitstudy_standin", "random-init"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DTYPES = ("float32", "float16", "bfloat16")


def default_cache() -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


@dataclass
class Entry:
    """Where timm will look for one name's pretrained weights."""

    name: str  # as given (arch or arch.tag)
    source: str  # 'hf-hub', 'url', or '' (none / unsupported)
    path: Path | None = None  # the weights file to write
    repo_dir: Path | None = None  # hf-hub: models--org--repo
    revision: str = "main"  # hf-hub: the ref (refs/<revision>) or a commit hash
    where: str = ""  # hub id or url, for messages
    skip: str = ""  # why it cannot be written (empty: it can)


def resolve(name: str, cache: Path, torch_hub: Path | None) -> Entry:
    """The file timm's loader reads for `name`, from its pretrained config."""
    import timm
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

    if not timm.is_model(name):
        return Entry(name, "", skip="not a timm model name")
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return Entry(name, "", skip="no pretrained config (a name without weights, e.g. vitstudy's own CIFAR models)")
    cfg = cfg.to_dict()
    source, loc = _resolve_pretrained_source(cfg)
    if source == "hf-hub":
        hub_id, filename = loc if isinstance(loc, (tuple, list)) else (loc, None)
        if isinstance(loc, (tuple, list)) and cfg.get("custom_load") == "hf":
            return Entry(name, "", where=hub_id, skip=f"custom loader (model.load_pretrained) for {hub_id}/{filename}")
        repo_id, revision = hf_split(hub_id)
        filename = filename or HF_WEIGHTS_NAME
        if not filename.endswith(".safetensors"):
            filename = next(iter(_get_safe_alternatives(filename)), filename)
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        revision = revision or "main"
        commit = revision if COMMIT_RE.match(revision) else _commit(repo_id, revision)
        return Entry(name, "hf-hub", repo_dir / "snapshots" / commit / filename, repo_dir, revision, hub_id)
    if source == "url":
        if cfg.get("custom_load"):
            return Entry(name, "", where=loc, skip=f"custom loader (model.load_pretrained, e.g. npz) for {loc}")
        if torch_hub is None:
            return Entry(
                name,
                "url",
                where=loc,
                skip=f"no hf_hub_id; timm downloads {loc}: pass --torch-hub DIR "
                f"(then TORCH_HOME=DIR/..; torch.hub's dir is $TORCH_HOME/hub)",
            )
        return Entry(name, "url", torch_hub / "checkpoints" / os.path.basename(urlparse(loc).path), where=loc)
    return Entry(name, "", skip=f"no downloadable weights in timm's pretrained config (source {source or 'none'})")


def _commit(repo_id: str, revision: str) -> str:
    """A fixed fake 40-hex revision per repo (the same on every run, so a rerun finds its entry)."""
    return hashlib.sha1(f"vitstudy-standin:{repo_id}@{revision}".encode()).hexdigest()


def is_standin(path: Path) -> bool:
    """Whether `path` is a weights file this script wrote (its metadata says so)."""
    if path.suffix != ".safetensors":  # torch files cannot carry metadata past timm's strict load: a side file
        return path.with_name(path.name + ".standin").is_file()
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get(MARKER_KEY) == MARKER_VALUE
    except Exception:
        return False


def existing(entry: Entry) -> Path | None:
    """The file timm would load for this entry now (a stand-in or real weights), if any."""
    if entry.source == "url":
        return entry.path if entry.path and entry.path.is_file() else None
    ref = entry.repo_dir / "refs" / entry.revision
    commit = entry.revision if COMMIT_RE.match(entry.revision) else (ref.read_text().strip() if ref.is_file() else None)
    if commit is None:
        return None
    path = entry.repo_dir / "snapshots" / commit / entry.path.name
    return path if path.exists() else None


def remove(entry: Entry, path: Path) -> None:
    """Delete a stand-in file, its marker, and the ref / snapshot folder that only existed for it."""
    path.unlink()
    path.with_name(path.name + ".standin").unlink(missing_ok=True)
    if entry.source != "hf-hub":
        return
    snapshot = path.parent
    if not any(snapshot.iterdir()):
        snapshot.rmdir()
        ref = entry.repo_dir / "refs" / entry.revision
        if ref.is_file() and ref.read_text().strip() == snapshot.name:
            ref.unlink()
        for d in (entry.repo_dir / "refs", entry.repo_dir / "snapshots", entry.repo_dir):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def state_dict(name: str, dtype: str):
    """Random-init weights of `name`, exactly the keys and shapes timm's pretrained load expects."""
    import timm
    import torch

    torch.manual_seed(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))
    model = timm.create_model(name, pretrained=False)
    target = getattr(torch, dtype)
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        out[k] = (v.to(target) if v.is_floating_point() else v).contiguous().clone()
    return out, model


def write(entry: Entry, dtype: str) -> int:
    """Write the stand-in file (atomically) and, for the hub, refs/<revision>; returns its size in bytes."""
    import torch
    from safetensors.torch import save_file

    tensors, _ = state_dict(entry.name, dtype)
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.path.with_name(entry.path.name + ".tmp")
    if entry.path.suffix == ".safetensors":
        save_file(
            tensors,
            str(tmp),
            metadata={"format": "pt", MARKER_KEY: MARKER_VALUE, "timm_name": entry.name, "warning": WARNING},
        )
    else:  # a torch file (url sources): extra keys would break timm's strict load, so the marker is a side file
        torch.save(tensors, tmp)
        entry.path.with_name(entry.path.name + ".standin").write_text(WARNING + "\n")
    os.replace(tmp, entry.path)
    if entry.source == "hf-hub" and not COMMIT_RE.match(entry.revision):
        ref = entry.repo_dir / "refs" / entry.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(entry.path.parent.name)  # no newline, like huggingface_hub
    return entry.path.stat().st_size


def verify(entry: Entry, cache: Path, torch_hub: Path | None) -> str:
    """Load `entry.name` with timm's pretrained path, offline, and compare every tensor with the file."""
    import timm
    import torch
    from huggingface_hub import constants
    from safetensors.torch import load_file

    saved = (
        load_file(str(entry.path)) if entry.path.suffix == ".safetensors" else torch.load(entry.path, weights_only=True)
    )
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        cache_dir = cache if entry.source == "hf-hub" else torch_hub / "checkpoints"
        model = timm.create_model(entry.name, pretrained=True, cache_dir=cache_dir)
    finally:
        constants.HF_HUB_OFFLINE = offline
    own = model.state_dict()
    if set(own) != set(saved):
        return f"MISMATCH keys: {sorted(set(own) ^ set(saved))[:4]}"
    bad = [k for k in own if not torch.equal(own[k], saved[k].to(own[k].dtype))]
    return f"MISMATCH values: {bad[:4]}" if bad else f"ok ({len(own)} tensors loaded exactly)"


# ------------------------------------------------------------------------------------------ what the figures need


def _preset_names(conf: Path) -> dict[str, dict]:
    from omegaconf import OmegaConf

    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) or {} for p in sorted((conf / "model").glob("*.yaml"))}


def makefile_lines(makefile: Path) -> dict[str, str]:
    """{figure target: the text after `$(RUN_FIG)` in its recipe}, make variables unexpanded."""
    lines, target = {}, None
    for line in makefile.read_text().replace("\\\n", " ").splitlines():
        m = re.match(r"^(fig-[\w-]+):", line)
        if m:
            target = m.group(1)
            continue
        if target and line.startswith("\t") and "$(RUN_FIG)" in line:
            lines[target] = line.split("$(RUN_FIG)", 1)[1].strip()
            target = None
    return lines


def makefile_vars(makefile: Path) -> dict[str, str]:
    """The Makefile's simple variable definitions (`NAME = / := / ?= value`), unexpanded."""
    text = makefile.read_text().replace("\\\n", " ")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^([A-Za-z_][\w-]*)\s*[:?]?=(.*)$", text, re.M)}


def makefile_runs(makefile: Path, values: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{figure target: the Hydra overrides of its `$(RUN_FIG)` line}, make variables expanded as make would
    (the Makefile's definitions, then `values`, then the environment; `$$` -> `$`)."""
    defs = {**makefile_vars(makefile), **(values or {})}

    def expand(text: str, depth: int = 0) -> str:
        def sub(m):
            name = m.group(1)
            value = defs.get(name, os.environ.get(name, ""))
            return expand(value, depth + 1) if depth < 10 else value

        return re.sub(r"\$\(([\w-]+)\)", sub, text.replace("$$", "\0")).replace("\0", "$")

    return {t: shlex.split(expand(line)) for t, line in makefile_lines(makefile).items()}


def _expand(overrides: list[str]) -> list[list[str]]:
    """Expand model / reference sweeps (model=a,b) into one override list each; other sweeps keep their first value."""
    combos: list[list[str]] = [[]]
    for ov in overrides:
        key, _, value = ov.partition("=")
        values = value.split(",") if key in ("model", "reference", "model.name", "reference.name") else [value]
        if "," in value and len(values) == 1:  # another sweep (e.g. analysis.blocks=[1],[7]): any one value composes
            values = [re.split(r",(?![^\[]*\])", value)[0]]
        combos = [c + [f"{key}={v}"] for c in combos for v in values]
    return combos


@functools.lru_cache(maxsize=None)
def compose(overrides: tuple[str, ...]):
    """`vitstudy.compose`, remembered per override tuple (the figure checks compose the same jobs repeatedly)."""
    sys.path.insert(0, str(REPO))
    from vitstudy.api import compose as vitstudy_compose

    return vitstudy_compose(list(overrides))


def figure_names(root: Path = REPO, targets: list[str] | None = None) -> dict[str, set[str]]:
    """{timm name: where it is needed} for every pretrained model of the figures.

    Sources: model presets with pretrained weights (conf/model/*.yaml), every experiment composed on its own and
    with each model/reference of the Makefile's figure targets (every model its analysis declares: model,
    reference, analysis.compare, analysis.models). With `targets`, only those Makefile targets.
    """
    sys.path.insert(0, str(root))
    from vitstudy import analyses

    needed: dict[str, set[str]] = {}
    presets = _preset_names(root / "conf")
    runs = {f"make {t}": ov for t, ov in makefile_runs(root / "Makefile").items() if targets is None or t in targets}
    if targets is None:
        for preset, node in presets.items():
            if node.get("pretrained", True) and node.get("name"):
                needed.setdefault(node["name"], set()).add(f"conf/model/{preset}.yaml")
        runs.update(
            {
                f"experiment {p.stem}": [f"experiment={p.stem}"]
                for p in sorted((root / "conf" / "experiment").glob("*.yaml"))
            }
        )
    for label, overrides in runs.items():
        for combo in _expand(overrides):
            cfg = compose(tuple(combo))
            for node in (
                analyses.get(cfg.analysis.name).models(cfg).values()
            ):  # model, reference, compare and grid models
                if node.pretrained and not node.checkpoint:
                    needed.setdefault(node.name, set()).add(label)
    return {name: where for name, where in needed.items() if not _bundled(name)}


def _bundled(name: str) -> bool:
    """Weights that ship inside vitstudy (a pretrained tag whose config names a local file): no stand-in needed."""
    import timm
    from timm.models import get_pretrained_cfg

    import vitstudy  # noqa: F401  (registers the bundled tags)

    arch, _, tag = name.partition(".")
    pcfg = get_pretrained_cfg(name) if tag else (get_pretrained_cfg(arch) if timm.is_model(arch) else None)
    file = getattr(pcfg, "file", None) if pcfg is not None else None
    return bool(file) and Path(file).is_file()


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=WARNING, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("names", nargs="*", help="timm names (arch.tag; a bare arch means its default tag)")
    ap.add_argument("--all-figures", action="store_true", help="every pretrained model `make figures` needs")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="Hugging Face hub cache (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)",
    )
    ap.add_argument("--torch-hub", type=Path, default=None, help="torch.hub dir for tags without hf_hub_id")
    ap.add_argument("--dtype", choices=DTYPES, default="float32", help="float16 halves the disk (timm casts on load)")
    ap.add_argument("--force", action="store_true", help="rewrite existing stand-ins (real weights are never touched)")
    ap.add_argument(
        "--verify", action="store_true", help="load each through timm (pretrained=True, offline) and compare"
    )
    ap.add_argument("--list", action="store_true", help="print the names and where they are needed; write nothing")
    ap.add_argument("--remove", action="store_true", help="delete the stand-ins of these names (only stand-ins)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import vitstudy  # noqa: F401  (registers vitstudy's own models, so their names resolve)

    wanted: dict[str, set[str]] = {n: {"command line"} for n in args.names}
    if args.all_figures:
        for n, where in figure_names().items():
            wanted.setdefault(n, set()).update(where)
    if not wanted:
        ap.error("give timm names or --all-figures")
    if args.list:
        for n in sorted(wanted):
            print(f"{n:<48} {', '.join(sorted(wanted[n]))}")
        return 0

    explicit = args.cache is not None
    cache = (args.cache or default_cache()).expanduser().resolve()
    print(WARNING, flush=True)
    if not explicit:
        print(
            f"WARNING: writing into your default Hugging Face cache {cache}: offline runs will load these RANDOM "
            f"weights as if pretrained; prefer --cache DIR (remove them with --remove)",
            flush=True,
        )
    total, failed, skipped = 0, [], []
    for name in sorted(wanted):
        entry = resolve(name, cache, args.torch_hub.resolve() if args.torch_hub else None)
        if entry.skip:
            skipped.append(name)
            print(f"skip   {name}: {entry.skip}")
            continue
        now = existing(entry)
        if args.remove:
            if now is not None and is_standin(now):
                total += now.stat().st_size
                remove(entry, now)
                print(f"remove {name}: {now}")
            continue
        if now is not None and not is_standin(now):
            print(f"keep   {name}: {now} holds real (not stand-in) weights; left alone")
            total += now.stat().st_size
            continue
        if now is not None and not args.force:
            size = now.stat().st_size
            status = "exists"
        else:
            t = time.perf_counter()
            size = write(entry, args.dtype)
            status = f"wrote  ({time.perf_counter() - t:.0f} s)"
        total += size
        print(f"{status:<6} {name}: {_size(size)} -> {entry.path}", flush=True)
        if args.verify:
            result = verify(entry, cache, args.torch_hub.resolve() if args.torch_hub else None)
            print(f"verify {name}: {result}", flush=True)
            if not result.startswith("ok"):
                failed.append(name)
    verb = "removed" if args.remove else "stand-in weights in"
    print(f"{verb} {cache}: {_size(total)} in all ({len(wanted) - len(skipped)} models, {len(skipped)} skipped)")
    if not args.remove:
        print(f"use them with: HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1  ({WARNING})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
