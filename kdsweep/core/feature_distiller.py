"""A feature method's per-run parts: taps on the student and a running teacher, and the connector.

Built once per run by the trainer (``Run``) when the config's method reads features
(``Method.taps``). The view table and stored soft labels hold logits only, so a feature method
always runs the teacher's forward in each step: on a private deep copy of the teacher network as
it was before BatchNorm folding (folding traces the model and drops the layers a spec names), with
its own hooks, so runs in threads never share a tap. The connector is built from the tapped shapes
of one probe forward (eval mode, no gradients: the student's BatchNorm statistics are untouched),
with its own seed, so a run and its resume start from the same connector.
"""

from __future__ import annotations

import copy
import threading
from typing import Sequence

import torch
from torch import nn

from kdsweep.core.layout import use_channels_last
from kdsweep.core.methods.base import Method
from kdsweep.core.methods.features import Features, FeatureShapes
from kdsweep.core.taps import FeatureTap, default_stages
from kdsweep.errors import KdsweepError

_INIT_LOCK = threading.Lock()  # the connector's seeded init must not interleave with another thread's


def source_network(teacher) -> tuple[nn.Module, object]:
    """(the teacher network to tap, the object whose ``autocast()`` its forward runs under).

    An online teacher or a table's online teacher: its network before BatchNorm folding."""
    online = getattr(teacher, "online", teacher)  # a TableTeacher holds its online teacher
    net = getattr(online, "source_model", None)
    if net is None:
        raise KdsweepError("feature methods need a pretrained teacher network (teacher.mode: pretrained); "
                           f"got {type(teacher).__name__}")
    return net, online


class FeatureDistiller:
    """The taps of one run's student and teacher, and its method's connector (or None)."""

    def __init__(self, method: Method, params: dict[str, float], student: nn.Module, teacher, *,
                 image_shape: Sequence[int], labels: torch.Tensor, device: torch.device, seed: int,
                 student_layers: Sequence[str] = (), teacher_layers: Sequence[str] = (),
                 channels_last: bool | None = None) -> None:
        self.method = method
        net, self._online = source_network(teacher)
        self.teacher_net = copy.deepcopy(net).eval().to(device)
        for p in self.teacher_net.parameters():
            p.requires_grad_(False)
        if channels_last is None:
            channels_last = use_channels_last(self.teacher_net, device)
        if channels_last:
            self.teacher_net.to(memory_format=torch.channels_last)
        want_stages = "stages" in method.taps
        want_emb = "embedding" in method.taps
        s_layers = list(student_layers) or (default_stages(student) if want_stages else [])
        t_layers = list(teacher_layers) or (default_stages(self.teacher_net) if want_stages else [])
        self.student_tap = FeatureTap(student, s_layers, embedding=want_emb, who="student")
        self.teacher_tap = FeatureTap(self.teacher_net, t_layers, embedding=want_emb, who="teacher")
        self.shapes = self._probe(student, image_shape, device, len(labels), labels.to(device))
        self.connector: nn.Module | None = None
        if method.connector is not None:
            with _INIT_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.connector = method.connector(self.shapes, params).to(device)

    @torch.no_grad()
    def _probe(self, student: nn.Module, image_shape, device, num_train: int, labels) -> FeatureShapes:
        x = torch.zeros(2, *image_shape, device=device)
        was_training = student.training
        student.eval()
        try:
            student(x)
            self.teacher_net(x)
        finally:
            student.train(was_training)
        s, t = self.student_tap, self.teacher_tap
        shapes = FeatureShapes(
            student=tuple(tuple(f.shape[1:]) for f in s.stages), teacher=tuple(tuple(f.shape[1:]) for f in t.stages),
            student_embedding=s.embedding.shape[1] if s.embedding is not None else None,
            teacher_embedding=t.embedding.shape[1] if t.embedding is not None else None,
            num_train=num_train, labels=labels)
        s.clear()
        t.clear()
        return shapes

    @property
    def connector_params(self) -> int:
        return sum(p.numel() for p in self.connector.parameters()) if self.connector is not None else 0

    @torch.no_grad()
    def teacher(self, batch) -> tuple[torch.Tensor, Features]:
        """The teacher's logits on ``batch`` and a Features holding its taps (the student's come later)."""
        with self._online.autocast():
            logits = self.teacher_net(batch.x)
        t = self.teacher_tap
        feats = Features(student=[], teacher=t.stages, teacher_embedding=t.embedding, index=batch.index,
                         connector=self.connector)
        t.clear()
        return logits, feats

    def with_student(self, feats: Features) -> Features:
        """``feats`` completed with the student's taps from the forward that just ran."""
        s = self.student_tap
        feats.student, feats.student_embedding = s.stages, s.embedding
        s.clear()
        return feats

    def begin_epoch(self, epoch: int, seed: int) -> None:
        """Tell a connector with its own randomness (CRD's negatives) which epoch starts (exact resume)."""
        start = getattr(self.connector, "begin_epoch", None)
        if start is not None:
            start(epoch, seed)

    def close(self) -> None:
        """Remove every hook: the finished student is exported without them."""
        self.student_tap.remove()
        self.teacher_tap.remove()


def connector_size(cfg, teacher, data) -> int:
    """Trainable parameters of the connector a run of ``cfg`` on ``data`` builds (0 for none), on the CPU."""
    from kdsweep.core.methods import LOSSES
    from kdsweep.core.models import build_model

    method = LOSSES.get(cfg.method)
    if method.connector is None:
        return 0
    student = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width)
    parts = FeatureDistiller(method, dict(cfg.method_params), student, teacher, image_shape=tuple(data.train_x.shape[1:]),
                             labels=data.train_y[:1].repeat(2), device=torch.device("cpu"), seed=cfg.seed,
                             student_layers=cfg.student_features, teacher_layers=cfg.teacher_features,
                             channels_last=False)
    try:
        return parts.connector_params
    finally:
        parts.close()
