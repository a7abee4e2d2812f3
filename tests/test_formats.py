"""The streamable formats (core/formats.py): the same images through a folder, a manifest and hf_disk;
identities; bad data named by file and row, in the library and as one CLI line before any store."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import write_spec
from photo_layouts import write_hf_disk, write_jpeg_folder, write_manifest

from kdsweep.cli import main
from kdsweep.core.formats import list_dataset
from kdsweep.core.lazyset import StreamOptions
from kdsweep.core.data import load_dataset
from kdsweep.errors import DataError

OPTS = StreamOptions(image_size=32, workers=0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {"imagefolder": write_jpeg_folder(root / "folder"), "manifest": write_manifest(root / "csv"),
            "parquet": write_manifest(root / "pq", parquet=True, names=False), "hf_disk": write_hf_disk(root / "hf")}


@pytest.mark.parametrize("fmt", ["imagefolder", "manifest", "parquet", "hf_disk"])
def test_each_format_lists_the_generated_images_and_labels(sets, fmt):
    lazy = list_dataset("manifest" if fmt == "parquet" else fmt, sets[fmt], options=OPTS)
    # write_*: 3 classes, 8 training and 4 test images each, labels balanced
    assert lazy.num_classes == 3 and len(lazy.train) == 24 and len(lazy.test) == 12
    assert torch.bincount(lazy.train_y).tolist() == [8, 8, 8]
    assert torch.bincount(lazy.test_y).tolist() == [4, 4, 4]
    assert len(lazy.train.read(0)) > 100  # encoded bytes of a real image


def test_manifest_labels_by_name_and_by_number_give_the_same_label_of_each_image(sets):
    named = list_dataset("manifest", sets["manifest"], options=OPTS)
    numbered = list_dataset("manifest", sets["parquet"], options=OPTS)
    assert named.classes == ("class0", "class1", "class2") and numbered.classes == ("0", "1", "2")
    assert torch.equal(named.train_y, numbered.train_y)


def test_limit_per_file_keeps_the_first_images_of_each_class(sets):
    lazy = list_dataset("imagefolder", sets["imagefolder"], options=OPTS, limit_per_file=2)
    assert torch.bincount(lazy.train_y).tolist() == [2, 2, 2]


def test_folder_identity_is_stable_and_follows_a_changed_file(tmp_path):
    root = write_jpeg_folder(tmp_path, classes=2, per_class=3, val_per_class=1)
    first = list_dataset("imagefolder", root, options=OPTS).identity
    assert list_dataset("imagefolder", root, options=OPTS).identity == first
    img = next((root / "train").rglob("*.jpg"))
    img.write_bytes(img.read_bytes() + b"\0")  # one byte longer: another file
    assert list_dataset("imagefolder", root, options=OPTS).identity != first


def test_identity_depends_on_the_augmentation_recipe(sets):
    cifar = list_dataset("imagefolder", sets["imagefolder"], options=OPTS)
    imagenet = list_dataset("imagefolder", sets["imagefolder"], options=StreamOptions(augment="imagenet", image_size=32))
    assert cifar.identity != imagenet.identity


def test_manifest_read_whole_is_a_resident_imageset(sets):
    data = load_dataset("manifest", sets["manifest"], image_size=16)
    assert data.train_x.shape == (24, 3, 16, 16) and data.loader == "resident"


# -- bad data: one line naming the file and the row ------------------------------------------------


def _rewrite_manifest(src: Path, dst: Path, row: int, **change) -> Path:
    rows = list(csv.DictReader(src.open()))
    rows[row - 1].update(change)
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return dst


@pytest.mark.parametrize("change, message", [
    ({"path": "images/nowhere.jpg"}, r"row 5: .*nowhere\.jpg: unreadable image"),
    ({"split": "holdout"}, r"row 5: split 'holdout'"),
    ({"label": "class9", "split": "test"}, r"row 5: .*label 'class9' is outside the classes"),
])
def test_bad_manifest_row_is_named(sets, change, message):
    bad = _rewrite_manifest(sets["manifest"], sets["manifest"].parent / "bad.csv", 5, **change)
    with pytest.raises(DataError, match=message) as info:
        list_dataset("manifest", bad, options=OPTS)
    assert str(bad) in str(info.value)


def test_empty_image_file_is_named(tmp_path):
    root = write_jpeg_folder(tmp_path, classes=2, per_class=2, val_per_class=1)
    img = sorted((root / "train").rglob("*.jpg"))[1]
    img.write_bytes(b"")
    with pytest.raises(DataError, match=f"{img}: unreadable image"):
        list_dataset("imagefolder", root, options=OPTS)


def test_class_without_training_images_is_named(sets, tmp_path):
    rows = list(csv.DictReader(sets["manifest"].open()))
    kept = [r for r in rows if not (r["label"] == "class1" and r["split"] == "train")]
    for r in kept:
        r["label"] = {"class0": "0", "class1": "1", "class2": "2"}[r["label"]]
    path = sets["manifest"].parent / "gap.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(kept)
    with pytest.raises(DataError, match="class '1' has no training image"):
        list_dataset("manifest", path, options=OPTS)


def test_hf_disk_missing_label_column_is_named(sets):
    with pytest.raises(DataError, match="data.label_column='fine_label' is not a column"):
        list_dataset("hf_disk", sets["hf_disk"], options=OPTS, label_column="fine_label")


def test_cli_bad_manifest_is_one_line_exit_2_and_creates_nothing(sets, tmp_path):
    bad = _rewrite_manifest(sets["manifest"], sets["manifest"].parent / "bad7.csv", 7, path="images/missing.jpg")
    work = tmp_path / "work"
    work.mkdir()
    spec = write_spec(work / "spec.yaml", bad, data={"dataset": "manifest", "root": str(bad), "loader": "stream",
                                                     "image_size": 16, "workers": 0})
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = CliRunner().invoke(main, ["study", "run", str(spec)])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "row 7" in lines[0] and "missing.jpg" in lines[0], result.output
    assert sorted(p.name for p in work.iterdir()) == ["spec.yaml"]  # no store, no MLflow database, no folder
