"""The KD methods against float64 references written from the papers' equations, plus the registry.

The references below use plain float64 torch ops and share no code with kdsweep.core.methods.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch

from kdsweep.core.losses import kd_loss
from kdsweep.core.methods import LOSSES, Method, MethodParam

SHAPES = [(2, 3), (16, 10), (64, 100)]  # (batch, classes)
# logit methods take logits alone; feature methods (taps) are tested in test_feature_methods.py
LOGIT_METHODS = [n for n in LOSSES.names() if not LOSSES.get(n).taps]


def logits(b: int, c: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g) * scale
    t = torch.randn(b, c, generator=g) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


# ---- float64 references, from the papers' equations ------------------------------------------


def log_softmax64(z: torch.Tensor) -> torch.Tensor:
    z = z - z.max(dim=1, keepdim=True).values
    return z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))


def ce64(s: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    log_p = log_softmax64(s)
    c = s.shape[1]
    nll = -log_p[torch.arange(len(y)), y]
    uniform = -log_p.sum(dim=1) / c
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def kl_rows64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i log(p_i / q_i) per row, for strictly positive distributions."""
    return (p * (torch.log(p) - torch.log(q))).sum(dim=1)


def kd64(s, t, temp):
    """Per-sample T^2 * KL(softmax(t/T) || softmax(s/T))."""
    return temp * temp * kl_rows64(torch.exp(log_softmax64(t / temp)), torch.exp(log_softmax64(s / temp)))


def dkd64(s, t, y, temp):
    """Per-sample (TCKD, NCKD, p_target of the teacher), each KL times T^2, from the paper's definitions."""
    p_s, p_t = torch.exp(log_softmax64(s / temp)), torch.exp(log_softmax64(t / temp))
    rows = torch.arange(len(y))
    b_s = torch.stack([p_s[rows, y], 1 - p_s[rows, y]], dim=1)
    b_t = torch.stack([p_t[rows, y], 1 - p_t[rows, y]], dim=1)
    keep = torch.ones_like(p_s, dtype=torch.bool)
    keep[rows, y] = False
    c = s.shape[1]
    q_s = p_s[keep].view(-1, c - 1)
    q_t = p_t[keep].view(-1, c - 1)
    q_s, q_t = q_s / q_s.sum(1, keepdim=True), q_t / q_t.sum(1, keepdim=True)
    return temp * temp * kl_rows64(b_t, b_s), temp * temp * kl_rows64(q_t, q_s), p_t[rows, y]


def zscore64(z):
    c = z.shape[1]
    mean = z.sum(dim=1, keepdim=True) / c
    std = torch.sqrt(((z - mean) ** 2).sum(dim=1, keepdim=True) / (c - 1))
    return (z - mean) / (std + 1e-7)


def method_terms(name, s, t, y, params=None, epoch=1000, smoothing=0.0):
    m = LOSSES.get(name)
    total, terms = m.loss(s, y, t, m.resolve(params or {}), epoch, label_smoothing=smoothing)
    return total, terms


def check_term(term32: torch.Tensor, s32: torch.Tensor, ref64: torch.Tensor, s64: torch.Tensor) -> None:
    """Value and d/d(student logits) of a float32 term against its float64 reference."""
    assert term32.dtype == torch.float32 and term32.dim() == 0
    torch.testing.assert_close(term32.double(), ref64, rtol=1e-5, atol=1e-6)
    (g32,) = torch.autograd.grad(term32, s32, retain_graph=True)
    (g64,) = torch.autograd.grad(ref64, s64, retain_graph=True)
    # gradients are ~1/B per element; float32 rounding gives ~1e-7 absolute noise on top of 1e-5 relative
    torch.testing.assert_close(g32.double(), g64, rtol=1e-5, atol=1e-6 * g64.abs().max().item() + 1e-9)


def leaves(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return s.clone().requires_grad_(True), s.double().requires_grad_(True)


# ---- ce, kd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c", SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_reference_without_teacher(b, c, smoothing):
    s, _, y = logits(b, c, seed=b + c)
    s32, s64 = leaves(s)
    total, terms = method_terms("ce", s32, None, y, smoothing=smoothing)
    assert list(terms) == ["ce"]
    check_term(terms["ce"], s32, ce64(s64, y, smoothing), s64)
    assert total is terms["ce"]


@pytest.mark.parametrize("b,c", SHAPES)
@pytest.mark.parametrize("alpha,temp", [(0.9, 4.0), (0.5, 1.0), (1.0, 8.0)])
def test_kd_matches_reference(b, c, alpha, temp):
    s, t, y = logits(b, c, seed=10 * b + c)
    s32, s64 = leaves(s)
    _, terms = method_terms("kd", s32, t, y, {"alpha": alpha, "temperature": temp})
    assert list(terms) == ["kd", "ce"]
    check_term(terms["kd"], s32, alpha * kd64(s64, t.double(), temp).mean(), s64)
    check_term(terms["ce"], s32, (1 - alpha) * ce64(s64, y), s64)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_kd_is_bit_identical_to_kd_loss(alpha, smoothing):
    # the trainer's numbers must not move when it switches from kd_loss to the registry
    s, t, y = logits(32, 10, seed=3)
    total, terms = method_terms("kd", s, t, y, {"alpha": alpha, "temperature": 4.0}, smoothing=smoothing)
    want = kd_loss(s, y, t, alpha=alpha, temperature=4.0, label_smoothing=smoothing)
    assert torch.equal(terms["kd"] + terms["ce"], want)
    assert torch.equal(total, want)


# ---- dkd ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c", SHAPES)
@pytest.mark.parametrize("alpha,beta,temp", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_reference(b, c, alpha, beta, temp):
    s, t, y = logits(b, c, seed=100 * b + c)
    s32, s64 = leaves(s)
    params = {"alpha": alpha, "beta": beta, "temperature": temp, "warmup": 20}
    _, terms = method_terms("dkd", s32, t, y, params, epoch=30)
    assert list(terms) == ["ce", "tckd", "nckd"]
    tckd, nckd, _ = dkd64(s64, t.double(), y, temp)
    check_term(terms["ce"], s32, ce64(s64, y), s64)
    check_term(terms["tckd"], s32, alpha * tckd.mean(), s64)
    check_term(terms["nckd"], s32, beta * nckd.mean(), s64)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_terms_decompose_classical_kd_per_sample(temp):
    # KD = TCKD + (1 - p_target^teacher) * NCKD (the paper's reformulation of KD), checked sample by sample
    s, t, y = logits(12, 20, seed=5)
    tckd64, nckd64, pt64 = dkd64(s.double(), t.double(), y, temp)
    torch.testing.assert_close(kd64(s.double(), t.double(), temp), tckd64 + (1 - pt64) * nckd64, rtol=1e-10, atol=0)
    unweighted = {"alpha": 1.0, "beta": 1.0, "temperature": temp, "warmup": 1}
    for i in range(len(y)):
        _, terms = method_terms("dkd", s[i : i + 1], t[i : i + 1], y[i : i + 1], unweighted, epoch=1)
        got = terms["tckd"].double() + (1 - pt64[i]) * terms["nckd"].double()
        want = kd64(s[i : i + 1].double(), t[i : i + 1].double(), temp)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epoch,factor", [(1, 0.05), (5, 0.25), (10, 0.5), (20, 1.0), (200, 1.0)])
def test_dkd_warmup_factor_for_python_and_tensor_epochs(epoch, factor):
    s, t, y = logits(8, 10, seed=6)
    _, full = method_terms("dkd", s, t, y, epoch=10_000)
    _, py = method_terms("dkd", s, t, y, epoch=epoch)
    _, dev = method_terms("dkd", s, t, y, epoch=torch.tensor(float(epoch)))
    for name in ("tckd", "nckd"):
        torch.testing.assert_close(py[name], factor * full[name], rtol=1e-6, atol=0)
        torch.testing.assert_close(dev[name], py[name], rtol=1e-6, atol=0)
    assert torch.equal(py["ce"], full["ce"])  # CE is never warmed up


def test_dkd_warmup_zero_means_none():
    s, t, y = logits(8, 10, seed=6)
    _, a = method_terms("dkd", s, t, y, {"warmup": 0}, epoch=1)
    _, b = method_terms("dkd", s, t, y, epoch=100)
    assert torch.equal(a["nckd"], b["nckd"])


def test_dkd_is_finite_when_the_target_saturates():
    # the reference's log(softmax) and -1000 mask give inf/NaN here; log-softmax does not
    s, t, y = logits(4, 10, seed=7)
    s[torch.arange(4), y] += 400.0
    t[torch.arange(4), y] += 400.0
    s = s.requires_grad_(True)
    total, terms = method_terms("dkd", s, t, y, {"temperature": 1.0})
    (g,) = torch.autograd.grad(total, s)
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(g).all()


# ---- lskd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c", SHAPES)
@pytest.mark.parametrize("temp,kd_w,ce_w", [(2.0, 9.0, 1.0), (1.0, 3.0, 0.5)])
def test_lskd_matches_reference(b, c, temp, kd_w, ce_w):
    s, t, y = logits(b, c, seed=1000 * b + c)
    s32, s64 = leaves(s)
    params = {"temperature": temp, "kd_weight": kd_w, "ce_weight": ce_w}
    _, terms = method_terms("lskd", s32, t, y, params)
    assert list(terms) == ["kd", "ce"]
    ref = kd_w * kd64(zscore64(s64), zscore64(t.double()), temp).mean()
    check_term(terms["kd"], s32, ref, s64)
    check_term(terms["ce"], s32, ce_w * ce64(s64, y), s64)


def test_lskd_kd_term_ignores_per_sample_shift_and_scale():
    s, t, y = logits(16, 10, seed=8)
    g = torch.Generator().manual_seed(9)
    a_s, a_t = torch.rand(16, 1, generator=g) * 5 + 0.2, torch.rand(16, 1, generator=g) * 5 + 0.2
    b_s, b_t = torch.randn(16, 1, generator=g) * 10, torch.randn(16, 1, generator=g) * 10
    _, base = method_terms("lskd", s, t, y)
    _, moved = method_terms("lskd", a_s * s + b_s, a_t * t + b_t, y)
    torch.testing.assert_close(moved["kd"], base["kd"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(moved["ce"], base["ce"])  # CE sees the raw logits


def test_lskd_on_standardised_logits_is_kd():
    # logits already z-scored pass through Z unchanged, so the KD term is Hinton's up to its weight
    s, t, y = logits(16, 10, seed=10)
    s, t = zscore64(s.double()).float(), zscore64(t.double()).float()
    _, ls = method_terms("lskd", s, t, y, {"temperature": 2.0, "kd_weight": 9.0})
    _, kd = method_terms("kd", s, t, y, {"alpha": 1.0, "temperature": 2.0})
    torch.testing.assert_close(ls["kd"] / 9.0, kd["kd"], rtol=1e-5, atol=1e-7)


# ---- the registry -------------------------------------------------------------------------------


def method_doc(m: Method) -> str:
    return sys.modules[m.terms.__module__].__doc__ or ""


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_method_documents_its_paper_params_and_terms(name):
    m = LOSSES.get(name)
    doc = method_doc(m)
    assert re.search(r"et al\.|, [A-Z][a-z]+ and [A-Z][a-z]+,", doc), f"{name}: docstring names no authors"
    assert re.search(r"\b20\d\d\b", doc), f"{name}: docstring gives no year"
    for p in m.params:
        assert f"``{p.name}``" in doc, f"{name}: docstring does not explain param {p.name!r}"
        assert p.help and p.check(p.default) is None
    assert m.summary


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_terms_are_uniquely_named_float32_scalars_that_sum_to_the_loss(name):
    s, t, y = logits(8, 10, seed=11)
    m = LOSSES.get(name)
    total, terms = m.loss(s, y, t, m.resolve({}), 3)
    assert terms and all(re.fullmatch(r"[a-z]+", k) for k in terms)  # they become MLflow loss_<term>
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in terms.values())
    assert torch.equal(total, sum(terms.values(), torch.zeros(())))


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_terms_never_read_a_tensor_value_on_the_host(name):
    # CUDA-graph steps pass the epoch as a device tensor; meta tensors have no values, so any
    # .item(), float() or Python branch on a tensor (a host sync, fatal in a capture) raises here
    m = LOSSES.get(name)
    s, t = torch.empty(8, 10, device="meta"), torch.empty(8, 10, device="meta")
    y = torch.empty(8, dtype=torch.long, device="meta")
    total, terms = m.loss(s, y, t, m.resolve({}), torch.empty((), device="meta"), label_smoothing=0.1)
    assert total.device.type == "meta" and all(v.shape == () for v in terms.values())


def test_resolve_fills_defaults_and_keeps_given_values():
    m = LOSSES.get("dkd")
    assert m.resolve({}) == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}
    assert m.resolve({"beta": 2}) == {"alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup": 20.0}
    assert LOSSES.get("ce").resolve({}) == {}


def test_resolve_names_an_unknown_param():
    with pytest.raises(ValueError, match=r"dkd.*'gamma'.*\['alpha', 'beta', 'temperature', 'warmup'\]"):
        LOSSES.get("dkd").resolve({"gamma": 1.0})
    with pytest.raises(ValueError, match=r"'ce'.*'alpha'"):
        LOSSES.get("ce").resolve({"alpha": 0.5})


@pytest.mark.parametrize(
    "name,param,value,why",
    [
        ("kd", "alpha", 1.5, r"must lie in \[0, 1\]"),
        ("kd", "temperature", 0.0, r"must be > 0"),
        ("dkd", "beta", -1.0, r"must be >= 0"),
        ("lskd", "temperature", float("nan"), r"must be a finite number"),
        ("kd", "alpha", "high", r"must be a number"),
    ],
)
def test_resolve_quotes_a_bad_value(name, param, value, why):
    with pytest.raises(ValueError, match=rf"{name}\.{param}={re.escape(repr(value))}: {why}"):
        LOSSES.get(name).resolve({param: value})


@pytest.mark.parametrize("name", [n for n in LOSSES.names() if LOSSES.get(n).needs_teacher])
def test_a_method_that_needs_a_teacher_says_so(name):
    s, _, y = logits(4, 5, seed=12)
    m = LOSSES.get(name)
    with pytest.raises(ValueError, match=rf"'{name}' needs teacher logits"):
        m.loss(s, y, None, m.resolve({}), 1)


def test_param_check_messages():
    assert MethodParam("x", 1.0, 0.0, 1.0, high_inclusive=False).check(1.0) == "must lie in [0, 1)"
    assert MethodParam("x", 1.0, high=2.0).check(3.0) == "must be <= 2"
    assert MethodParam("x", 1.0).check(-1e9) is None


def test_registering_a_name_twice_is_refused():
    from kdsweep.core.methods.base import register

    with pytest.raises(ValueError, match="'kd' registered twice"):
        register(LOSSES.get("kd"))


# ---- dist ---------------------------------------------------------------------------------------


def pearson_distance64(a, b, dim):
    """mean of 1 - corr along ``dim`` (the paper's definition), with the implementation's 1e-8 guard."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    corr = (a * b).sum(dim) / (torch.sqrt((a * a).sum(dim) * (b * b).sum(dim)) + 1e-8)
    return 1 - corr.mean()


# not 2 samples: centred over a batch of 2, each class column is (d, -d), so the intra correlation is
# exactly +-1, its float64 gradient is 0 and only float32 noise would be compared
@pytest.mark.parametrize("b,c", [(3, 4), (16, 10), (64, 100)])
@pytest.mark.parametrize("beta,gamma,temp", [(2.0, 2.0, 4.0), (1.0, 0.5, 1.0)])
def test_dist_matches_reference(b, c, beta, gamma, temp):
    s, t, y = logits(b, c, seed=7 * b + c)
    s32, s64 = leaves(s)
    _, terms = method_terms("dist", s32, t, y, {"beta": beta, "gamma": gamma, "temperature": temp})
    assert list(terms) == ["ce", "inter", "intra"]
    p_s, p_t = torch.exp(log_softmax64(s64 / temp)), torch.exp(log_softmax64(t.double() / temp))
    check_term(terms["ce"], s32, ce64(s64, y), s64)
    check_term(terms["inter"], s32, beta * temp * temp * pearson_distance64(p_s, p_t, 1), s64)
    check_term(terms["intra"], s32, gamma * temp * temp * pearson_distance64(p_s, p_t, 0), s64)


def test_dist_is_zero_for_perfectly_correlated_predictions():
    s, _, y = logits(16, 10, seed=13)
    _, terms = method_terms("dist", s, s.clone(), y, {"temperature": 1.0})
    assert abs(terms["inter"].item()) < 1e-5 and abs(terms["intra"].item()) < 1e-5
    _, other = method_terms("dist", s, logits(16, 10, seed=14)[0], y, {"temperature": 1.0})
    assert other["inter"].item() > 0.1 and other["intra"].item() > 0.1  # and not for unrelated ones


def test_dist_batch_of_one_has_a_finite_gradient():
    # the intra relation of a single sample compares constant vectors: the eps guard keeps it finite
    s, t, y = logits(1, 10, seed=15)
    s = s.requires_grad_(True)
    total, _ = method_terms("dist", s, t, y)
    (g,) = torch.autograd.grad(total, s)
    assert torch.isfinite(total) and torch.isfinite(g).all()
