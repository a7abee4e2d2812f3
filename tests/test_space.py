"""space: a trial's sampled values become the distilled config (define-by-run over methods); baselines match it."""

import optuna
import pytest

from kdsweep.study import space
from kdsweep.study.spec import StudySpec


def make_spec(**search) -> StudySpec:
    return StudySpec.model_validate({
        "name": "s", "teacher": {"arch": "resnet20"},
        "student": {"arch": "resnet8", "width": 0.5, "kd": {"temperature": 3.0, "alpha": 0.7},
                    "dkd": {"beta": 6.0}, "recipe": {"epochs": 5, "lr": 0.1, "ema_decay": 0.0}},
        "search": search,
    })


def test_unsearched_values_come_from_the_student():
    spec = make_spec()
    trial = optuna.create_study().ask()
    values = space.sample(trial, spec)
    assert values == {"method": "kd", "kd.temperature": 3.0, "kd.alpha": 0.7, "ema_decay": 0.0, "lr": 0.1,
                      "width": 0.5, "arch": "resnet8"}
    assert trial.params == {}


def test_searched_values_are_suggested_within_bounds():
    spec = make_spec(kd={"temperature": {"low": 1, "high": 8, "log": True}, "alpha": {"choices": [0.5, 0.9]}},
                     width={"low": 0.25, "high": 1.0, "step": 0.25}, lr=0.05)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        v = space.sample(trial, spec)
        assert 1 <= v["kd.temperature"] <= 8 and v["kd.alpha"] in (0.5, 0.9) and v["width"] in (0.25, 0.5, 0.75, 1.0)
        assert v["lr"] == 0.05 and "lr" not in trial.params  # a fixed number is not searched
        study.tell(trial, 0.0)


def test_a_trial_draws_the_method_then_only_that_methods_params():
    spec = make_spec(method={"choices": ["kd", "dkd", "lskd"]}, kd={"temperature": {"low": 1, "high": 8}},
                     dkd={"beta": {"low": 1, "high": 10}, "temperature": {"choices": [2.0, 4.0]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = set()
    for _ in range(30):
        trial = study.ask()
        v = space.sample(trial, spec)
        method = v["method"]
        drawn.add(method)
        # only the drawn method's params reach Optuna and the config
        assert {k.split(".")[0] for k in trial.params if "." in k} <= {method}
        cfg = space.student_config(spec, v, seed=0, device="cpu")
        assert cfg.method == method and set(cfg.method_params) == {
            p.split(".", 1)[1] for p in v if p.startswith(f"{method}.")}
        if method == "dkd":
            assert 1 <= cfg.method_params["beta"] <= 10 and cfg.method_params["temperature"] in (2.0, 4.0)
            assert cfg.method_params["alpha"] == 1.0 and cfg.method_params["warmup"] == 20.0  # published defaults
        if method == "lskd":
            assert trial.params == {"method": "lskd"}  # nothing of lskd searched: its defaults
        study.tell(trial, 0.0)
    assert drawn == {"kd", "dkd", "lskd"}


def test_student_method_params_override_the_published_defaults():
    spec = make_spec(method="dkd")
    v = space.sample(optuna.create_study().ask(), spec)
    assert v["method"] == "dkd" and v["dkd.beta"] == 6.0 and v["dkd.alpha"] == 1.0


def test_student_and_baseline_configs_match_except_kd():
    spec = make_spec()
    values = {"method": "kd", "kd.temperature": 6.0, "kd.alpha": 0.8, "ema_decay": 0.0, "lr": 0.1, "width": 0.5}
    student = space.student_config(spec, values, seed=3, device="cpu")
    base = space.baseline_config(spec, width=0.5, seed=3, device="cpu")
    assert student.method == "kd" and student.method_params == {"alpha": 0.8, "temperature": 6.0}
    assert base.method == "ce" and not base.distills
    for field in ("arch", "width", "seed", "epochs", "batch_size", "optimizer", "schedule", "weight_decay"):
        assert getattr(student, field) == getattr(base, field)


@pytest.mark.parametrize("search, expected", [
    ({}, [0.5]),
    ({"width": {"choices": [0.25, 0.5]}}, [0.25, 0.5]),
    ({"width": {"low": 0.25, "high": 0.75, "step": 0.25}}, [0.25, 0.5, 0.75]),
    ({"width": {"low": 0.25, "high": 0.75}}, None),
])
def test_widths_known_in_advance(search, expected):
    assert space.widths(make_spec(**search)) == expected


def test_teacher_config_takes_the_teacher_recipe():
    spec = StudySpec.model_validate({"name": "s", "teacher": {"arch": "resnet20", "seed": 7, "recipe": {"epochs": 9}},
                                     "student": {"arch": "resnet8"}})
    cfg = space.teacher_config(spec, "cpu")
    assert (cfg.arch, cfg.epochs, cfg.seed, cfg.method) == ("resnet20", 9, 7, "ce")


def test_a_trial_draws_the_arch_and_width_only_for_an_arch_that_scales():
    # a torchvision model has no width: its trials keep 1.0 and never ask Optuna for one
    spec = make_spec(arch={"choices": ["resnet8", "torchvision:mobilenet_v3_small"]}, width={"choices": [0.25, 0.5]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        v = space.sample(trial, spec)
        drawn.add(v["arch"])
        if v["arch"] == "resnet8":
            assert v["width"] in (0.25, 0.5) and "width" in trial.params
        else:
            assert v["width"] == space.FIXED_WIDTH and "width" not in trial.params
        study.tell(trial, 0.0)
    assert drawn == {"resnet8", "torchvision:mobilenet_v3_small"}


def test_baseline_and_student_of_a_trial_share_its_arch():
    spec = make_spec(arch={"choices": ["resnet8", "resnet14"]})
    study = optuna.create_study()
    study.enqueue_trial({"arch": "resnet14"})
    trial = study.ask()
    values = space.sample(trial, spec)
    student = space.student_config(spec, values, seed=1, device="cpu")
    base = space.baseline_config(spec, width=values["width"], seed=1, device="cpu", arch=values["arch"])
    assert student.arch == base.arch == "resnet14"
    # without a trial's arch the baseline is the student's (studies that do not search arch)
    assert space.baseline_config(spec, width=0.5, seed=1, device="cpu").arch == "resnet8"


def test_first_trials_try_every_arch_and_method_once():
    spec = make_spec(arch={"choices": ["resnet8", "resnet14", "resnet20"]}, method={"choices": ["kd", "dkd"]})
    assert space.first_trials(spec) == [{"method": "kd", "arch": "resnet8"}, {"method": "dkd", "arch": "resnet14"},
                                        {"method": "kd", "arch": "resnet20"}]
