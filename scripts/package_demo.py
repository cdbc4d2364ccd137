"""Package the bundled demo models: training checkpoints -> fp16 safetensors inside the package + a manifest.

    python scripts/package_demo.py --runs outputs/train-demo --cifar /path/to/cifar10   # after `make train-demo`

For each of vit_mini_cifar and resnet_mini_cifar, reads `<runs>/<arch>/checkpoints/last.pt` (the last epoch, not
the best on validation), writes `vitstudy/zoo/weights/<arch>.demo_cifar10.safetensors` (fp16; timm loads it
through the pretrained tag `<arch>.demo_cifar10`, whose config names the file) and records in
`vitstudy/zoo/weights/demo.json`: the SHA-256, the recipe and epochs, the training wall time and command, the
CIFAR-10 test accuracy on all 10,000 test images measured with vitstudy's own loading path (pretrained=true,
its eval transform), and each bundled sample image's predicted class computed *independently* (safetensors
read directly, the pixels normalised by hand, no timm pretrained code, no vitstudy transform). The test suite
reloads the packaged weights offline through `pretrained=true` and must reproduce those predictions exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "vitstudy" / "zoo" / "weights"
SAMPLE = ROOT / "vitstudy" / "assets" / "cifar10_sample"
ARCHS = ("vit_mini_cifar", "resnet_mini_cifar")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sample_files() -> list[Path]:
    return sorted(SAMPLE.glob("*/*.jpg"))


def independent_predictions(arch: str, path: Path) -> list[int]:
    """Argmax of the model on every bundled image: random-init timm model + the safetensors state dict, pixels
    scaled to [0, 1] and normalised with CIFAR-10's mean/std by hand (32 px images: no resize, no crop)."""
    import timm

    import vitstudy  # noqa: F401  (registers the architectures)

    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    preds = []
    files = sample_files()
    with torch.inference_mode():
        for i in range(0, len(files), 100):
            x = torch.stack(
                [
                    (torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255 - mean)
                    / std
                    for f in files[i : i + 100]
                ]
            )
            preds += model(x).argmax(1).tolist()
    return preds


def vitstudy_test_accuracy(arch: str, cifar_test: Path) -> dict:
    """Top-1 on every CIFAR-10 test image through vitstudy: the preset (pretrained=true), its own transform."""
    from torch.utils.data import DataLoader

    from vitstudy.pipeline import data, models

    preset = {"vit_mini_cifar": "vit_cifar10_demo", "resnet_mini_cifar": "resnet_cifar10_demo"}[arch]
    m = models.load(models.node(preset), "model")
    base = data.ImageFiles(str(cifar_test))
    correct = total = 0
    loader = DataLoader(range(len(base)), batch_size=500)
    with torch.inference_mode():
        for idx in loader:
            items = [base[int(i)] for i in idx]
            x = torch.stack([m.transform(img) for img, _ in items])
            y = torch.tensor([label for _, label in items])
            correct += int((m.module(x).argmax(1) == y).sum())
            total += len(items)
    return {"test_images": total, "test_correct": correct, "test_top1": correct / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="outputs/train-demo", help="folder holding <arch>/ training run dirs")
    ap.add_argument(
        "--cifar", default=None, help="extracted CIFAR-10 JPEGs (train/ and test/); adds the 10k test accuracy"
    )
    args = ap.parse_args()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    manifest_path = WEIGHTS / "demo.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["sample"] = {
        "folder": "vitstudy/assets/cifar10_sample",
        "images": len(sample_files()),
        "order": "sorted class folder, then sorted file name",
    }
    models = manifest.setdefault("models", {})
    for arch in ARCHS:
        run = Path(args.runs) / arch
        ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt["state_dict"].items()}
        out = WEIGHTS / f"{arch}.demo_cifar10.safetensors"
        save_file(state, str(out), metadata={"architecture": arch, "tag": "demo_cifar10", "format": "pt"})
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        history = ckpt["history"]
        entry = {
            "tag": f"{arch}.demo_cifar10",
            "file": out.name,
            "sha256": sha,
            "bytes": out.stat().st_size,
            "dtype": "float16",
            "recipe": ckpt["config"]["recipe"],
            "epochs": int(ckpt["epoch"]),
            "checkpoint": "last epoch",
            "train_wall_time_s": round(float(ckpt["wall_time_s"]), 1),
            "val_top1_by_epoch": [round(float(v), 4) for v in history["val_top1"]],
            "lr_by_epoch": [
                float(f"{v:.4g}") for v in history["lr"]
            ],  # the schedule as it ran (epochs may change on resume)
            "val_images": ckpt["config"]["dataset"].get("val_images"),
            "train_command": f"vitstudy train model={arch} recipe=demo dataset=imagefolder dataset.root=CIFAR "
            f"dataset.val_images={ckpt['config']['dataset'].get('val_images')} (make train-demo)",
        }
        t = time.perf_counter()
        preds = independent_predictions(arch, out)
        labels = [sorted(p.name for p in SAMPLE.iterdir() if p.is_dir()).index(f.parent.name) for f in sample_files()]
        entry["sample_predictions"] = "".join(map(str, preds))  # one digit (class index) per image, in sample order
        entry["sample_correct"] = int(sum(p == y for p, y in zip(preds, labels)))
        if args.cifar:
            entry.update(vitstudy_test_accuracy(arch, Path(args.cifar) / "test"))
        models[arch] = entry
        print(
            f"{arch}: {out.stat().st_size / 1e6:.2f} MB fp16, {entry['epochs']} epochs, sample {entry['sample_correct']}/"
            f"{len(labels)}"
            + (f", CIFAR-10 test top-1 {entry['test_top1']:.4f}" if args.cifar else "")
            + f" ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {manifest_path}")


if __name__ == "__main__":
    main()
