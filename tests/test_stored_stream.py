"""core/stored_stream.py: stored soft labels replayed through the stream loader's workers."""

from __future__ import annotations

import torch

from photo_layouts import write_jpeg_folder

from kdsweep.core.config import TrainConfig
from kdsweep.core.memory import open_data
from kdsweep.core.models import build_model
from kdsweep.core.soft_labels import CropRecipe, DecodedImages, StoredLabels, crop_one, write_store
from kdsweep.core.stream import decode, stream_loaders


def test_stream_batches_are_the_stored_crops_of_the_full_images_sharded_per_process(tmp_path):
    root = write_jpeg_folder(tmp_path / "photos", classes=2, per_class=8, val_per_class=2, size=40)
    data = open_data("imagefolder", root, loader="stream", augment="imagenet", image_size=24, workers=0)
    teacher = build_model("cnn_student", num_classes=2, width=0.25).eval()
    store = write_store(teacher, DecodedImages(data.train), data.mean, data.std, CropRecipe(crops=3, top_k=1),
                        tmp_path / "labels", num_classes=2, data_identity=data.identity, size=(24, 24))
    labels = StoredLabels(store, data.identity)
    cfg = TrainConfig(arch="cnn_student", width=0.25, batch_size=8, seed=4, method="kd")
    base = stream_loaders(cfg, data, torch.device("cpu"), channels_last=False)[0]
    loader = labels.train_loader(base)
    whole = list(loader.epoch(1))
    assert len(whole) == 2 and all(b.x.shape == (8, 3, 24, 24) for b in whole)
    assert [torch.equal(a.x, b.x) for a, b in zip(whole, loader.epoch(1))] == [True, True]  # fixed by (seed, epoch)
    b = whole[0]
    i, r = int(b.index[0]), int(b.view[0])
    box, flip = store.arrays["boxes"][i, r].tolist(), bool(store.arrays["flips"][i, r])
    # the stored box is in the full image's pixels (40 px here), cut and resized to image_size
    expected = loader.normalise(crop_one(decode(data.train.read(i)), box, flip, (24, 24)).unsqueeze(0))
    assert torch.allclose(b.x[:1], expected)
    assert labels(b).shape == (8, 2)
    halves = []
    for rank in (0, 1):  # DDP: each process's share of every global batch
        part = labels.train_loader(stream_loaders(cfg, data, torch.device("cpu"), channels_last=False)[0])
        part.shard = (rank, 2)
        halves.append(list(part.epoch(1)))
    for w, h0, h1 in zip(whole, *halves):
        assert torch.equal(torch.cat([h0.index, h1.index]), w.index) and torch.equal(torch.cat([h0.x, h1.x]), w.x)
