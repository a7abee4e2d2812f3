"""Methods combined by name (``kd+at``): the sum of the parts' terms, their params by part, in specs."""

from __future__ import annotations

import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.methods import LOSSES
from kdsweep.core.methods.features import Features
from kdsweep.core.models import build_model
from kdsweep.core.teachers import OnlineTeacher
from kdsweep.core.trainer import train


def test_kd_plus_at_is_the_sum_of_both_methods_terms():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    feats = Features([torch.rand(6, 4, 8, 8, generator=g)], [torch.rand(6, 7, 8, 8, generator=g)])
    both = LOSSES.get("kd+at")
    params = both.resolve({"kd.alpha": 0.6, "at.at_weight": 50.0})
    total, terms = both.loss(s, y, t, params, 1, feats=feats)
    kd, at = LOSSES.get("kd"), LOSSES.get("at")
    _, kd_terms = kd.loss(s, y, t, kd.resolve({"alpha": 0.6}), 1)
    _, at_terms = at.loss(s, y, t, at.resolve({"at_weight": 50.0}), 1, feats=feats)
    assert set(terms) == {"kd", "ce", "at"}
    torch.testing.assert_close(terms["ce"], kd_terms["ce"] + at_terms["ce"])  # (1 - alpha) CE + 1 * CE
    torch.testing.assert_close(terms["kd"], kd_terms["kd"])
    torch.testing.assert_close(terms["at"], at_terms["at"])
    torch.testing.assert_close(total, sum(terms.values()))


@pytest.mark.parametrize("name,why", [
    ("at+fitnet", "combine one feature method with logit methods"),
    ("kd+ce", "drop 'ce'"),
    ("kd+kd", "two or more different methods"),
    ("kd+nope", "unknown KD method 'nope'"),
])
def test_a_combination_that_cannot_run_is_refused(name, why):
    with pytest.raises(ValueError, match=why):
        LOSSES.get(name)
    assert name not in LOSSES


def test_the_combination_params_are_named_by_part():
    m = LOSSES.get("dkd+fitnet")
    assert m.param_names() == ["dkd.alpha", "dkd.beta", "dkd.temperature", "dkd.warmup", "fitnet.hint_weight",
                               "fitnet.ce_weight"]
    cfg = TrainConfig(arch="resnet8", method="dkd+fitnet", method_params={"fitnet.hint_weight": 10})
    assert cfg.as_params()["fitnet.hint_weight"] == 10.0 and cfg.as_params()["dkd.beta"] == 8.0
    with pytest.raises(ValueError, match=r"dkd\+fitnet\.dkd\.beta=-1"):
        m.resolve({"dkd.beta": -1})


def test_kd_plus_fitnet_trains_with_its_connector():
    data = synthetic_imageset(64, 32, num_classes=4, size=16, seed=5)
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4))
    cfg = TrainConfig(arch="resnet8", width=0.5, epochs=1, batch_size=32, lr=0.05, method="kd+fitnet")
    result = train(cfg, data, teacher=teacher)
    assert set(result.final.loss_terms) == {"kd", "ce", "hint"}
    assert result.extras["connector_params"] > 0


def test_a_spec_names_a_combination_as_a_list_or_searches_it_as_one_choice(tmp_path):
    import optuna

    from kdsweep.study import space
    from kdsweep.study.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\ndata: {{root: {tmp_path}}}\nteacher: {{arch: resnet14}}\n"
                    "student: {arch: resnet8, method: [kd, at], kd: {alpha: 0.7}}\n"
                    "search: {method: {choices: [kd+at]}, at: {at_weight: {low: 10, high: 100}}}\n")
    spec = load_spec(path)
    assert spec.student.method == "kd+at"
    values = space.sample(optuna.create_study().ask(), spec)
    cfg = space.student_config(spec, values, seed=0, device="cpu")
    assert cfg.method == "kd+at" and cfg.method_params["kd.alpha"] == 0.7  # fixed under kd
    assert 10 <= cfg.method_params["at.at_weight"] <= 100  # searched under at
