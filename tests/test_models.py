"""Model building and checkpoint loading: weights only, never code; clear errors on mismatch."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitstudy.errors import VitstudyError
from vitstudy.pipeline.models import create, eval_transform


def small_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, **kw)


@pytest.mark.parametrize("fmt", ["pth", "pt", "safetensors", "wrapped", "ddp"])
def test_checkpoint_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    src = small_vit()
    state = src.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth' if fmt != 'pt' else 'pt'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": state, "epoch": 3, "arch": "vit"}, path)
    elif fmt == "ddp":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    model = create("vit_tiny_patch16_224", checkpoint=str(path), img_size=32, patch_size=8, depth=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.training


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(small_vit(num_classes=10).state_dict(), path)
    with pytest.raises(VitstudyError, match=r"does not fit.*head.weight.*num_classes"):
        create("vit_tiny_patch16_224", checkpoint=str(path), img_size=32, patch_size=8, depth=2)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, f)
    with pytest.raises(VitstudyError, match="refusing checkpoint.*weights_only"):
        create("resnet18", checkpoint=str(path))
    assert "code ran" not in capsys.readouterr().out


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(VitstudyError, match="checkpoint file not found"):
        create("resnet18", checkpoint=str(tmp_path / "nope.pth"))


def test_unknown_model_and_tag_list_closest():
    with pytest.raises(VitstudyError, match="closest: .*vit_base_patch16_224"):
        create("vit_base_patch16_244")


def test_pretrained_weights_offline_give_a_one_line_hint():
    with pytest.raises(VitstudyError, match="model.checkpoint=.*model.pretrained=false") as err:
        create("resnet18.a1_in1k", pretrained=True)
    assert "\n" not in str(err.value)


def test_eval_transform_follows_img_size_kwarg():
    _, cfg = eval_transform(small_vit(), kwargs={"img_size": 32})
    assert cfg["input_size"] == (3, 32, 32)
    _, cfg = eval_transform(timm.create_model("resnet18"), input_size=[3, 64, 64])
    assert cfg["input_size"] == (3, 64, 64)


@pytest.mark.parametrize(
    "content, suffix",
    [
        (b"just some text, not weights\n", ".pth"),
        (b"\x00" + bytes(range(255)) * 4, ".pt"),
        (b"", ".pth"),
        (bytes(range(256)), ".safetensors"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_called_unreadable(tmp_path, content, suffix):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(content)
    with pytest.raises(VitstudyError, match="is not a readable checkpoint") as err:
        create("resnet18", checkpoint=str(path))
    assert "Python objects" not in str(err.value) and "\n" not in str(err.value)
