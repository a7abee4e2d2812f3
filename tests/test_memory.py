"""Which loader reads the data (core/memory.py): byte counts, the auto choice and its reason, and the
issue's memory test: a folder whose decoded size exceeds data.memory_budget trains on the stream
loader with the process's peak RSS under the budget plus a stated overhead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from photo_layouts import write_jpeg_folder

from kdsweep.core.memory import choose, open_data, parse_bytes


@pytest.mark.parametrize("value, expected", [(1000, 1000), ("512MB", 512 * 10**6), ("4GB", 4 * 10**9),
                                             ("2GiB", 2 * 2**30), ("1.5 kb", 1500), ("77", 77)])
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", ["lots", "4 GBytes", "-1MB", 0, "0GB", "1e9"])
def test_bad_byte_counts_are_refused_quoting_the_value(value):
    with pytest.raises(ValueError, match=repr(value).replace("+", r"\+")):
        parse_bytes(value)


def test_auto_keeps_resident_within_the_budget_and_streams_over_it():
    within = choose("auto", images=1000, size=32, budget=3 * 32 * 32 * 1000, augment="cifar")
    over = choose("auto", images=1001, size=32, budget=3 * 32 * 32 * 1000, augment="cifar")
    assert within[0] == "resident" and "within data.memory_budget" in within[1]
    assert over[0] == "stream" and "over data.memory_budget" in over[1]
    assert choose("auto", images=1, size=32, budget=10**12, augment="imagenet")[0] == "stream"
    assert choose("resident", images=10**9, size=224, budget=1, augment="cifar")[0] == "resident"


def test_open_data_notes_the_choice(tmp_path):
    root = write_jpeg_folder(tmp_path, classes=2, per_class=3, val_per_class=1, size=16)
    small = open_data("imagefolder", root, image_size=16, memory_budget=10**6)
    tight = open_data("imagefolder", root, image_size=16, memory_budget=100, workers=0)
    assert small.loader == "resident" and small.loader_note.startswith("resident (8 images decode to 6.1 KB")
    assert tight.loader == "stream" and "over data.memory_budget 100 B" in tight.loader_note


# -- peak RSS: stream under the budget plus a stated overhead -----------------------------------------

SIZE = 160
BUDGET = 8 * 10**6
# Measured on a loaded 2-core machine: the peak RSS of the same process (torch ~1 GB here, the model,
# one batch's activations, the same modules imported) varies by about +-25 MB from run to run, and the
# stream loader adds a few prefetched uint8 batches (~1 MB each); so 32 MB over the baseline plus budget.
OVERHEAD = 32 * 10**6
SCRIPT = """
import json, resource, sys
import torch
import PIL.Image, torch.utils.data, torchvision.transforms.v2, kdsweep.core.stream  # imported by both runs
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.memory import open_data
from kdsweep.core.trainer import train
mode, root = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
if mode == "baseline":  # the same model, batch and image size on 16 images: torch, the model, its activations
    data = synthetic_imageset(n_train=16, n_test=16, num_classes=4, size={size})
else:
    data = open_data("imagefolder", root, loader=mode, memory_budget={budget}, image_size={size}, workers=1)
train(TrainConfig(arch="resnet8", width=0.25, epochs=1, batch_size=16, channels_last=False), data)
print(json.dumps({{"loader": data.loader, "note": data.loader_note,
                   "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}}))
""".format(size=SIZE, budget=BUDGET)


def peak(mode: str, root: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(root)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_over_the_budget_streams_with_peak_rss_under_budget_plus_overhead(tmp_path):
    # 600 JPEGs (4 classes) that decode to 46 MB at 160 px: more than budget + overhead (40 MB), so a
    # process that held them decoded could not pass the bound below
    root = write_jpeg_folder(tmp_path, classes=4, per_class=120, val_per_class=30, size=SIZE)
    decoded = 600 * 3 * SIZE * SIZE
    assert decoded > BUDGET + OVERHEAD
    base = peak("baseline", root)
    stream = peak("auto", root)
    print(f"peak RSS: baseline {base['self'] / 1e6:.0f} MB, stream {stream['self'] / 1e6:.0f} MB "
          f"(its worker {stream['workers'] / 1e6:.0f} MB); decoded {decoded / 1e6:.0f} MB, budget {BUDGET / 1e6:.0f} MB")
    assert stream["loader"] == "stream" and "over data.memory_budget 8.0 MB" in stream["note"]
    assert stream["self"] <= base["self"] + BUDGET + OVERHEAD
    # the worker is a fork of the trainer: it shares torch's pages and holds a few images at a time
    assert stream["workers"] <= base["self"] + BUDGET + OVERHEAD
