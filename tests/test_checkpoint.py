"""Checkpoints: atomic writes, damaged files refused naming the file, code-carrying pickles refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from kdsweep.core.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.trainer import train
from kdsweep.errors import CheckpointError

STATE = {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "epoch": 3, "history": [{"loss": 0.5}]}


class Explodes:
    """Fails while being pickled, after torch.save has begun writing."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated by a failing pickle)")


class RunsCode:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip(tmp_path):
    path = save_checkpoint(STATE, tmp_path / "sub" / "c.pt")
    back = load_checkpoint(path)
    assert torch.equal(back["w"], STATE["w"]) and back["epoch"] == 3 and back["history"] == STATE["history"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = save_checkpoint(STATE, tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"w": torch.zeros(4096), "bad": Explodes()}, path)
    assert path.read_bytes() == before  # written to a temp file, never over the real one
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path)["w"], STATE["w"])


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):  # record which file each fsync hit, then really sync
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").exists() else str(fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save_checkpoint(STATE, tmp_path / "c.pt")
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.endswith(".tmp")  # data, before rename
    assert synced[1] == str(tmp_path)  # the folder, so the rename survives a power cut
    assert path.exists()


def damaged(tmp_path: Path, how: str) -> Path:
    path = save_checkpoint(STATE, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "bit flipped in a tensor":
        data[len(data) // 2] ^= 0x01  # inside the 16 KiB tensor record
    elif how == "garbage":
        data = bytearray(os.urandom(2048))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "empty", "bit flipped in a tensor", "garbage"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, how):
    path = damaged(tmp_path, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_bit_flip_in_a_tensor_would_load_silently_without_the_crc_check(tmp_path):
    # the reason load_checkpoint checks the zip CRCs: torch.load alone returns a wrong weight
    path = damaged(tmp_path, "bit flipped in a tensor")
    loaded = torch.load(path, weights_only=True)
    assert not torch.equal(loaded["w"], STATE["w"])
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'absent.pt'}: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("writer", ["torch.save", "plain pickle"])
def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"w": torch.zeros(3), "x": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")
    assert not marker.exists()  # weights_only=True: os.system was never called


def test_trainer_refuses_a_corrupted_resume_checkpoint_naming_it(tiny_imageset, tmp_path):
    cfg = TrainConfig(arch="resnet8", width=0.25, epochs=2, batch_size=64, lr=0.05)
    path = tmp_path / "progress.pt"
    with pytest.raises(Stop):
        train(cfg, tiny_imageset, checkpoint_path=path, on_epoch=stop_after_first)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(CheckpointError, match=str(path)):
        train(cfg, tiny_imageset, checkpoint_path=path)


class Stop(Exception):
    pass


def stop_after_first(m) -> None:
    raise Stop  # a crash right after epoch 1's checkpoint was written



def test_stream_loader_resume_matches_an_uninterrupted_run(tmp_path):
    # the stream loader's batches depend only on (seed, epoch, image): a run stopped after epoch 1 and
    # resumed from its checkpoint ends bit-identical to one that ran straight through
    from photo_layouts import write_jpeg_folder

    from kdsweep.core.formats import list_dataset
    from kdsweep.core.lazyset import StreamOptions

    root = write_jpeg_folder(tmp_path / "photos", classes=2, per_class=8, val_per_class=2, size=24)
    data = list_dataset("imagefolder", root, options=StreamOptions(augment="imagenet", image_size=16, workers=0))
    cfg = TrainConfig(arch="resnet8", width=0.25, epochs=2, batch_size=8, lr=0.05, ema_decay=0.5)
    full = train(cfg, data)
    path = tmp_path / "progress.pt"
    with pytest.raises(Stop):
        train(cfg, data, checkpoint_path=path, on_epoch=stop_after_first)
    resumed = train(cfg, data, checkpoint_path=path)
    assert resumed.resumed_from_epoch == 1
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
