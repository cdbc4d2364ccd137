"""Images: the synthetic set, image folders of every colour mode, sampling and batching rules."""

import numpy as np
import pytest
from PIL import Image

from vitstudy.errors import VitstudyError
from vitstudy.pipeline.data import ImageFiles, SyntheticImages, make_batches, sample_indices


def test_synthetic_is_deterministic_labelled_and_any_size():
    a, b = SyntheticImages(100, 48, 10, seed=3), SyntheticImages(100, 48, 10, seed=3)
    img, label = a[7]
    assert img.size == (48, 48) and img.mode == "RGB" and 0 <= label < 10
    assert np.array_equal(np.asarray(img), np.asarray(b[7][0]))
    assert not np.array_equal(np.asarray(img), np.asarray(SyntheticImages(100, 48, 10, seed=4)[7][0]))
    assert SyntheticImages(10, 300)[0][0].size == (300, 300)
    labels = {SyntheticImages(200, 16)[i][1] for i in range(200)}
    assert labels == set(range(10))


def test_image_folder_converts_every_mode_to_rgb(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    arr = (np.random.default_rng(0).uniform(0, 255, (9, 9, 3))).astype(np.uint8)
    Image.fromarray(arr).convert("L").save(tmp_path / "cats" / "grey.png")
    Image.fromarray(arr).convert("P").save(tmp_path / "cats" / "palette.png")
    Image.fromarray(arr).convert("RGBA").save(tmp_path / "dogs" / "alpha.png")
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "dogs" / "cmyk.jpg")
    Image.fromarray((arr[..., 0].astype(np.uint16) * 200)).save(tmp_path / "dogs" / "deep.png")
    ds = ImageFiles(str(tmp_path))
    assert ds.classes == ["cats", "dogs"] and len(ds) == 5
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (9, 9) and label in (0, 1)


def test_flat_folder_has_no_labels(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    ds = ImageFiles(str(tmp_path))
    assert ds[0][1] == -1 and ds.classes == []


def test_unreadable_image_is_reported_by_path(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(VitstudyError, match="broken.jpg"):
        ImageFiles(str(tmp_path))[0]


def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(VitstudyError, match="dataset root not found"):
        ImageFiles(str(tmp_path / "nope"))
    with pytest.raises(VitstudyError, match="no images"):
        ImageFiles(str(tmp_path))


def test_sampling_without_replacement_and_its_limits():
    idx = sample_indices(100, 40, seed=1)
    assert len(set(idx)) == 40 and idx == sample_indices(100, 40, seed=1) and idx != sample_indices(100, 40, seed=2)
    with pytest.raises(VitstudyError, match="larger than the data set"):
        sample_indices(10, 11, 0)
    with pytest.raises(VitstudyError, match="too few"):
        sample_indices(10, 3, 0)


def test_short_tail_is_folded_or_dropped():
    b = make_batches(list(range(67)), 32, "fold")
    assert [len(x) for x in b.batches] == [32, 35] and b.tail == "folded"
    b = make_batches(list(range(67)), 32, "drop")
    assert [len(x) for x in b.batches] == [32, 32] and b.dropped == 3
    b = make_batches(list(range(68)), 32)
    assert [len(x) for x in b.batches] == [32, 32, 4] and b.tail == "none"
    with pytest.raises(VitstudyError, match="batch_size"):
        make_batches(list(range(10)), 3)
