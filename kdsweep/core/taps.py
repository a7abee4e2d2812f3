"""Intermediate features of any model, by ``named_modules()`` path, taken with forward hooks.

A feature method (``kdsweep.core.methods``, ``Method.taps``) reads two kinds of feature beside the
logits:

- ``stages``: the outputs of named layers, e.g. ``layers.2`` of a CIFAR ResNet, ``layer3`` of a
  torchvision ResNet. A spec names them (``student.features: [layer2, layer3]``); without names a
  model's defaults are used (:func:`default_stages`).
- ``embedding``: the penultimate embedding, the flattened input of the classifier layer.

Hooks (not ``torchvision.models.feature_extraction``'s tracing) so that torchvision, timm and user
models with Python control flow work unchanged. A :class:`FeatureTap` belongs to one model and one
run: its hooks write the last forward's outputs into the tap, which the step reads right after the
forward.

How a model family declares its defaults (:func:`default_stages`, :func:`embedding_layer`), first
match wins:

1. attributes on the model: ``feature_stages`` (a sequence of paths, shallow to deep: the outputs
   of its stages) and optionally ``embedding_layer`` (the classifier's path); the built-in families
   set them in their constructors;
2. timm models: ``model.feature_info`` (each entry's ``module``), timm's own stage list;
3. torchvision-style ResNets: ``layer1`` .. ``layer4``;
4. the embedding: the last ``nn.Linear`` of the model.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import torch
from torch import nn

from kdsweep.errors import KdsweepError


class FeatureError(KdsweepError):
    """A layer name that the model does not have, or a model without default feature layers."""


def default_stages(model: nn.Module) -> list[str]:
    """The paths of ``model``'s stage outputs, shallow to deep (see the module docstring)."""
    declared = getattr(model, "feature_stages", None)
    if declared:
        return [str(p) for p in declared]
    info = getattr(model, "feature_info", None)  # timm
    if info is not None:
        try:
            paths = [d["module"] for d in info]
        except (TypeError, KeyError):
            paths = []
        paths = [p for p in paths if p]
        if paths:
            return paths
    names = dict(model.named_modules())
    resnet = [p for p in ("layer1", "layer2", "layer3", "layer4") if p in names]
    if resnet:
        return resnet
    raise FeatureError(f"{type(model).__name__} declares no feature stages; name its layers in student.features "
                       "/ teacher.features (`kdsweep models features ARCH` lists them)")


def embedding_layer(model: nn.Module) -> str:
    """The path of ``model``'s classifier; its (flattened) input is the penultimate embedding."""
    declared = getattr(model, "embedding_layer", None)
    if declared:
        return str(declared)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise FeatureError(f"{type(model).__name__} has no nn.Linear classifier to take the embedding from")
    return linear[-1]


def check_layers(model: nn.Module, names: Sequence[str], who: str) -> None:
    """FeatureError naming ``who`` (the model), the first unknown name and the closest real ones."""
    paths = [p for p, _ in model.named_modules() if p]
    known = set(paths)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, paths, n=3, cutoff=0.5)
            hint = f"; closest: {close}" if close else f"; it has {paths[:8]}{'...' if len(paths) > 8 else ''}"
            raise FeatureError(f"{who} has no layer {name!r}{hint} (`kdsweep models features` lists them)")


class FeatureTap:
    """Forward hooks on ``model``: after each forward, ``stages`` holds the named layers' outputs
    (in the order asked for) and ``embedding`` the classifier's flattened input (or None).

    The tensors are the layers' own outputs, not copies, so gradients flow through them; a later
    in-place op on one (none of the built-in families has one) would change what the tap holds.
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], *, embedding: bool = False, who: str = "") -> None:
        self.paths = list(stages)
        modules = dict(model.named_modules())
        check_layers(model, self.paths, f"{who} {type(model).__name__}".strip())
        self._out: dict[int, torch.Tensor] = {}
        self.embedding: torch.Tensor | None = None
        self._handles = []
        for i, path in enumerate(self.paths):
            self._handles.append(modules[path].register_forward_hook(self._keep(i)))
        if embedding:
            head = embedding_layer(model)
            self._handles.append(modules[head].register_forward_pre_hook(self._keep_input))

    def _keep(self, i: int):
        def hook(module, args, output):
            self._out[i] = output
        return hook

    def _keep_input(self, module, args):
        self.embedding = torch.flatten(args[0], 1)

    @property
    def stages(self) -> list[torch.Tensor]:
        return [self._out[i] for i in range(len(self.paths))]

    def clear(self) -> None:
        self._out.clear()
        self.embedding = None

    def remove(self) -> None:
        """Take the hooks off the model (a finished run's student is exported without them)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()


@torch.no_grad()
def layer_table(model: nn.Module, image_size: int, in_channels: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """Every named module's path and output shape (without the batch dim) on one ``image_size`` image.

    Modules that return something other than a tensor (e.g. a tuple) are listed with shape ``()``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, m in model.named_modules():
        if not path:
            continue

        def hook(module, args, output, path=path):
            shapes.setdefault(path, tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ())
        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(p, shapes[p]) for p, _ in model.named_modules() if p in shapes]
