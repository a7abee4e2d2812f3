"""kd_loss against a float64 reference written from the formula, plus its edge cases."""

import math

import pytest
import torch

from kdsweep.core.losses import kd_loss, soft_kl


def reference(student, teacher, y, alpha, t):
    """alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, by hand, in float64."""
    s, te = student.double(), teacher.double()
    p_t = torch.softmax(te / t, 1)
    log_p_s = torch.log_softmax(s / t, 1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()  # batchmean
    ce = -torch.log_softmax(s, 1)[torch.arange(len(y)), y].mean()
    return alpha * t * t * kl + (1 - alpha) * ce


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_matches_float64_reference(alpha, t):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    got = kd_loss(student, y, teacher, alpha=alpha, temperature=t)
    want = reference(student, teacher, y, alpha, t)
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), want.item(), rel_tol=1e-5, abs_tol=1e-6)


def test_alpha_weights_the_kd_term():
    # alpha = 1 is pure distillation: labels must not matter
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y1, y2 = torch.zeros(8, dtype=torch.long), torch.full((8,), 4)
    assert kd_loss(s, y1, t, alpha=1.0).item() == pytest.approx(kd_loss(s, y2, t, alpha=1.0).item())
    assert kd_loss(s, y1, t, alpha=0.0).item() != pytest.approx(kd_loss(s, y2, t, alpha=0.0).item())


def test_kl_is_zero_when_student_equals_teacher():
    x = torch.randn(4, 10)
    assert soft_kl(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_bf16_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    full = kd_loss(s, y, t, alpha=0.5, temperature=4.0)
    half = kd_loss(s.bfloat16(), y, t.bfloat16(), alpha=0.5, temperature=4.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)
    # float32 arithmetic on the bf16 values: the float32 loss of those very values, to float32
    # rounding (a bf16 softmax or log would be off by ~1e-2 relative, and only cast at the end)
    widened = kd_loss(s.bfloat16().float(), y, t.bfloat16().float(), alpha=0.5, temperature=4.0)
    assert half.item() == pytest.approx(widened.item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, word", [
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"alpha": -0.1}, "alpha=-0.1"),
    ({"alpha": 0.5, "temperature": 0.0}, "temperature=0.0"),
])
def test_bad_arguments_name_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        kd_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 3), **kwargs)


def test_kd_without_teacher_logits_is_refused():
    with pytest.raises(ValueError, match="teacher"):
        kd_loss(torch.randn(2, 3), torch.tensor([0, 1]), None, alpha=0.5)
