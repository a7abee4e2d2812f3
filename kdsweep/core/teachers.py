"""Where a student's soft targets come from during training.

The trainer asks a teacher source for the logits of each batch. ``OnlineTeacher`` runs the
teacher network on the very views the student sees. ``TableTeacher`` looks them up instead:
the standard CIFAR augmentation (pad by ``p`` pixels, random crop, horizontal flip) has only
``(2p+1)^2 * 2`` distinct views of an image (162 for ``p = 4``), so the teacher's logits for
every view of every training image can be computed once per teacher and indexed by
``(Batch.index, Batch.view)``. The student still sees a fresh random view each step and gets the
teacher's output for exactly that view; a KD step then costs what a student-only step costs.

A table is keyed by the teacher's weights, the data's identity, the augmentation (pad) and the
normalisation and precision it was computed with (:func:`table_key`), so a changed teacher,
data set or recipe never reads a stale one. Batches the table does not cover (no augmentation,
another pad, another data set) go to the online teacher it holds.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from kdsweep.core.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.core.layout import use_channels_last
from kdsweep.core.loader import DeviceLoader, augment, num_views, view_to_offsets
from kdsweep.core.precision import bf16_autocast
from kdsweep.errors import CheckpointError


class TeacherSource(Protocol):
    def __call__(self, batch) -> torch.Tensor:  # batch: kdsweep.core.loader.Batch
        ...

    def to(self, device: torch.device, *, channels_last: bool | None = None,
           bf16: bool | None = None) -> "TeacherSource":
        ...

    def for_run(self, data_identity: str, loader: DeviceLoader) -> "TeacherSource":
        """The source to use for the batches of ``loader`` (a table only where it covers them)."""
        ...

    def compiled(self) -> Callable:
        """This source's call under ``torch.compile`` (or itself, where nothing would be compiled)."""
        ...


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of a frozen (eval) model with each Conv+BatchNorm pair folded into one conv.

    The same function up to rounding (about 1e-6 relative in float32), one pass over the
    activations fewer per layer: the teacher's forward is most of an online KD step. Models
    torch.fx cannot trace are returned unfolded.
    """
    from torch.fx.experimental.optimization import fuse

    was_training = model.training
    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # untraceable control flow: fall back to the model as it is
        return model.train(was_training)


class OnlineTeacher:
    """Runs a frozen teacher network in eval mode on each batch (in its own precision, see :meth:`to`).

    ``fold_bn`` folds BatchNorm into the convolutions first (see :func:`fold_batchnorm`).
    """

    def __init__(self, model: nn.Module, *, fold_bn: bool = False) -> None:
        model = model.eval()
        self.source_model = model  # as given, unfolded: feature methods tap its layers by name
        self.model = fold_batchnorm(model) if fold_bn else model
        for p in [*self.model.parameters(), *model.parameters()]:
            p.requires_grad_(False)
        self._compiled: Callable | None = None
        self.device = torch.device("cpu")
        self.bf16 = False

    def to(self, device: torch.device, *, channels_last: bool | None = None,
           bf16: bool | None = None) -> "OnlineTeacher":
        """Move to ``device``; ``channels_last=None`` picks the layout that suits this teacher there.

        The teacher's layout and precision need not match the student's: a narrow student stays
        NCHW on the CPU (see kdsweep.core.layout), while a wide teacher's forward is ~1.3x faster
        in channels_last there, whatever the input's layout; ``bf16`` runs the forward under its
        own bf16 autocast (see kdsweep.core.precision.teacher_bf16); None keeps the current choice.
        """
        device = torch.device(device)
        self.model.to(device)
        if channels_last is None:
            channels_last = use_channels_last(self.model, device)
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.device = device
        if bf16 is not None:
            self.bf16 = bf16
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context this teacher's forward runs in: bf16 autocast, or none."""
        return bf16_autocast(self.device) if self.bf16 else contextlib.nullcontext()

    def for_run(self, data_identity: str, loader: DeviceLoader) -> "OnlineTeacher":
        """The source to use for batches of ``loader`` (an online teacher covers every batch)."""
        return self

    def compiled(self) -> Callable:
        """This teacher's forward through ``torch.compile``, built once and shared by every run that asks."""
        if self._compiled is None:
            net = torch.compile(self.model, dynamic=False)

            @torch.no_grad()
            def forward(batch) -> torch.Tensor:
                with self.autocast():
                    return net(batch.x)
            self._compiled = forward
        return self._compiled

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        with self.autocast():
            return self.model(batch.x)


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes and bytes), independent of its device."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def table_key(model: nn.Module, data_identity: str, *, pad: int, mean, std, precision: str) -> str:
    """What a table's values depend on: teacher weights, data, augmentation, normalisation, precision."""
    parts = [weights_digest(model), data_identity, f"pad={pad}", f"mean={tuple(mean)}", f"std={tuple(std)}",
             f"precision={precision}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class TeacherTable:
    """Teacher logits ``[N, V, C]`` for every training image ``n`` and view ``v`` (see loader.num_views)."""

    logits: torch.Tensor
    pad: int
    key: str
    data_identity: str

    @property
    def num_images(self) -> int:
        return self.logits.shape[0]

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        return self.logits[index, view]

    def to(self, device: torch.device | str) -> "TeacherTable":
        self.logits = self.logits.to(device)
        return self

    def save(self, path: Path) -> Path:
        return save_checkpoint({"logits": self.logits.cpu(), "pad": self.pad, "key": self.key,
                                "data_identity": self.data_identity}, Path(path))

    @classmethod
    def load(cls, path: Path, *, key: str) -> "TeacherTable":
        """Read a saved table; one saved under another key is refused (CheckpointError)."""
        saved = load_checkpoint(path)
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise CheckpointError(f"{path}: holds the table {saved.get('key') if isinstance(saved, dict) else None!r}, "
                                  f"not {key!r}")
        return cls(saved["logits"], int(saved["pad"]), key, str(saved["data_identity"]))


@torch.no_grad()
def compute_table(model: nn.Module, loader: DeviceLoader, *, data_identity: str, key: str,
                  autocast: Callable[[], object], batch_size: int = 1024) -> TeacherTable:
    """Run ``model`` on every view of every image of ``loader`` (its pad, normalisation, device).

    The inputs are built with the loader's own ``augment`` and ``normalise``, so a table entry is
    the teacher's output on exactly the tensor a training batch holds for that image and view.
    """
    was_training = model.training
    model.eval()
    n, pad, dev = len(loader.x), loader.pad, loader.device
    views = num_views(pad)
    table: torch.Tensor | None = None
    for v in range(views):
        dx, dy, flip = view_to_offsets(v, pad)
        for start in range(0, n, batch_size):
            images = loader.x[start:start + batch_size]
            b = len(images)
            x = augment(images, torch.full((b,), dx, device=dev), torch.full((b,), dy, device=dev),
                        torch.full((b,), flip, device=dev), pad)
            with autocast():
                out = model(loader.normalise(x))
            if table is None:
                table = torch.empty((n, views, out.shape[1]), dtype=out.dtype, device=dev)
            table[start:start + b, v] = out
    model.train(was_training)
    assert table is not None  # loader holds at least one image
    return TeacherTable(table, pad, key, data_identity)


class TableTeacher:
    """Looks teacher logits up in a :class:`TeacherTable`; the online teacher serves what it does not cover."""

    def __init__(self, table: TeacherTable, online: OnlineTeacher) -> None:
        self.table, self.online = table, online

    def to(self, device: torch.device, *, channels_last: bool | None = None,
           bf16: bool | None = None) -> "TableTeacher":
        self.table.to(device)
        self.online.to(device, channels_last=channels_last, bf16=bf16)
        return self

    def covers(self, data_identity: str, loader: DeviceLoader) -> bool:
        """Same data, augmentation and precision (a bf16 table holds bf16 logits) as the online teacher's."""
        same_precision = (self.table.logits.dtype == torch.bfloat16) == self.online.bf16
        if not isinstance(loader, DeviceLoader):  # the stream loader's crops are not a fixed set of views
            return False
        return (loader.train and data_identity == self.table.data_identity and loader.pad == self.table.pad
                and len(loader.x) == self.table.num_images and same_precision)

    def for_run(self, data_identity: str, loader: DeviceLoader) -> "TableTeacher | OnlineTeacher":
        """This table where it covers ``loader``'s batches, else the online teacher."""
        return self if self.covers(data_identity, loader) else self.online

    def compiled(self) -> "TableTeacher":
        return self  # a lookup: nothing to compile

    def __call__(self, batch) -> torch.Tensor:
        if batch.view is None:  # an evaluation batch: not a training view
            return self.online(batch)
        return self.table.lookup(batch.index, batch.view)


def table_for(teacher: OnlineTeacher, data, *, device: torch.device | str, bf16: bool, channels_last: bool = True,
              pad: int = 4, cache_dir: Path | None = None, batch_size: int = 1024) -> TeacherTable:
    """The view table of ``teacher`` on ``data``'s training split: read from ``cache_dir`` or computed (and saved).

    ``bf16``/``channels_last`` must be what the trainer gives the online teacher (its
    :func:`kdsweep.core.precision.teacher_bf16` and layout), so the table holds what the online
    teacher would return inside the training step.
    """
    device = torch.device(device)
    key = table_key(teacher.model, data.identity, pad=pad, mean=data.mean, std=data.std,
                    precision="bf16" if bf16 else "fp32")
    path = Path(cache_dir) / f"teacher-table-{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        return TeacherTable.load(path, key=key).to(device)
    teacher.to(device, channels_last=channels_last, bf16=bf16)
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=batch_size, device=device, mean=data.mean,
                          std=data.std, train=False, pad=pad, channels_last=channels_last, resize=data.input_size)
    table = compute_table(teacher.model, loader, data_identity=data.identity, key=key, autocast=teacher.autocast,
                          batch_size=batch_size)
    if path is not None:
        table.save(path)
    return table
