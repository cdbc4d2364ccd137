"""What a new user meets first (issue 20, items 8-13): progress in logs, offline runs, unreadable images, start-up
time, help and list output, compare's errors, the API's entry points, the report's settings lines."""
import json
import os
import subprocess
import sys

import pytest

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli

EXE = os.path.join(os.path.dirname(sys.executable), "vitstudy")


def test_report_labels_probe_splits_not_repeats():
    """linear_probe records one image set per split (train/val/test), with no batches: the report says so."""
    from vitstudy.report.settings import settings

    run = {"analysis": "linear_probe", "config": {"dataset": {"batch_size": 100}},
           "images": [{"repeat": 0, "split": "train", "images": 600, "batches": None},
                      {"repeat": 1, "split": "val", "images": 250, "batches": None},
                      {"repeat": 2, "split": "test", "images": 150, "batches": None}]}
    line = settings(run)["images"]
    assert line == "train 600, val 250, test 150 images", line
    assert "None" not in line and "repeats" not in line
    cka = {"analysis": "cka_within", "config": {"dataset": {"batch_size": 64}},
           "images": [{"repeat": r, "images": 512, "batches": 8} for r in range(3)]}
    assert settings(cka)["images"] == "512 images x 3 repeats, 8 batches of 64"
