"""The multistep (step-decay) schedule: recipe checks, the lr at each milestone, and cache keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from kdsweep.core.config import TrainConfig
from kdsweep.core.trainer import make_schedule
from kdsweep.study.schema import Recipe


def lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr of every step of the run, as the trainer's schedule gives it."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_schedule(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_drops_by_gamma_after_each_milestone_epoch():
    cfg = TrainConfig(arch="resnet8", epochs=6, lr=0.05, schedule="multistep", milestones=(2, 4), gamma=0.1)
    per_epoch = lrs(cfg, steps_per_epoch=3)[::3]  # milestones are epochs, the schedule steps per batch
    assert per_epoch == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])


def test_a_milestone_past_the_last_epoch_never_applies():
    cfg = TrainConfig(arch="resnet8", epochs=2, lr=0.05, schedule="multistep", milestones=(150, 180, 210))
    assert set(lrs(cfg, steps_per_epoch=2)) == {0.05}


def test_recipe_reads_the_papers_step_decay():
    r = Recipe(schedule="multistep", milestones=[150, 180, 210], gamma=0.1)
    cfg = TrainConfig(arch="resnet8", **r.model_dump())
    assert (cfg.milestones, cfg.gamma) == ((150, 180, 210), 0.1)
    assert cfg.as_params()["milestones"] == (150, 180, 210)


@pytest.mark.parametrize(("fields", "message"), [
    ({"schedule": "multistep"}, "needs milestones"),
    ({"schedule": "cosine", "milestones": [10]}, "multistep only"),
    ({"schedule": "multistep", "milestones": [20, 10]}, "increasing"),
    ({"schedule": "multistep", "milestones": [0, 10]}, "increasing"),
    ({"schedule": "multistep", "milestones": [10], "gamma": 0}, "greater than 0"),
    ({"schedule": "multistep", "milestones": [10], "gamma": 2}, "less than or equal to 1"),
])
def test_bad_recipe_is_refused_naming_the_value(fields, message):
    with pytest.raises(ValidationError, match=message):
        Recipe(**fields)


def test_milestones_key_the_cache_only_under_multistep():
    # the cosine runs logged before these fields existed keep their fingerprints
    cosine = TrainConfig(arch="resnet8")
    assert cosine.fingerprint(data_identity="d") == dataclasses.replace(cosine, gamma=0.5).fingerprint(data_identity="d")
    step = TrainConfig(arch="resnet8", schedule="multistep", milestones=(2,))
    assert step.fingerprint(data_identity="d") != dataclasses.replace(step, milestones=(3,)).fingerprint(data_identity="d")
    assert step.fingerprint(data_identity="d") != dataclasses.replace(step, gamma=0.5).fingerprint(data_identity="d")
