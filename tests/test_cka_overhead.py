"""What cka_across costs beyond the bare forwards (issue 20 item 14): the API loads every batch once."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vitstudy import VitstudyError, cka_matrix


class Counted(Dataset):
    """Counts the images it decodes, as a DataLoader over files would (each one costs a read and a transform)."""

    def __init__(self, images):
        self.images, self.loaded = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.loaded += 1
        return self.images[i], 0


def test_cka_matrix_loads_each_image_once(tiny_vit, tiny_resnet, images):
    """The first batch told cka_matrix the input size and was then loaded again: 8 images more in 24 (3 batches)."""
    data = Counted(images)
    df = cka_matrix(
        tiny_vit, DataLoader(data, batch_size=8), other=tiny_resnet, layers=["blocks.0"], other_layers=["layer1.0"]
    )
    assert data.loaded == len(images)
    assert (df.num_images == len(images)).all()


def test_cka_matrix_of_an_empty_loader_is_one_line():
    with pytest.raises(VitstudyError, match="no batches"):
        cka_matrix(torch.nn.Linear(2, 2), [])
