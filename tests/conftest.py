"""Shared fixtures: offline Hugging Face settings, tiny random-init timm models, generated images."""

import os
import tempfile

# Never touch the network: an empty, offline Hugging Face cache (set before timm/huggingface_hub import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vitstudy-hf-")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["VITSTUDY_CACHE"] = tempfile.mkdtemp(prefix="vitstudy-cache-")  # never the repo's outputs/

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3).eval()


@pytest.fixture(scope="session")
def tiny_resnet():
    torch.manual_seed(1)
    return timm.create_model("resnet18", zero_init_last=False).eval()


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 3, 32, 32, generator=g)
