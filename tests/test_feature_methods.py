"""The feature methods (fitnet, at, rkd, crd, reviewkd) against float64 references written from the
papers' equations, value and gradient, on random tensors.

The references use plain float64 torch ops (and the connectors' weights, read as numbers); they
share no code with kdsweep.core.methods.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdsweep.core.methods import LOSSES
from kdsweep.core.methods.features import Features, FeatureShapes

FEATURE_METHODS = ["fitnet", "at", "rkd", "crd", "reviewkd"]


def rand(*shape, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x.abs() if positive else x


def ce64(s, y):
    s = s.double()
    log_p = s - torch.logsumexp(s, dim=1, keepdim=True)
    return -log_p[torch.arange(len(y)), y].mean()


def run(name, feats, s_logits, y, params=None, epoch=1000):
    m = LOSSES.get(name)
    t_logits = torch.randn(s_logits.shape)  # a feature step always has the running teacher's logits
    return m.loss(s_logits, y, t_logits, m.resolve(params or {}), epoch, feats=feats)


def conv64(x, weight, stride=1, padding=0):
    """A direct 2-D convolution, no bias, float64: sum over in-channels and kernel offsets."""
    x, w = x.double(), weight.double()
    b, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = torch.zeros(b, o, oh, ow, dtype=torch.float64)
    for i, j in itertools.product(range(kh), range(kw)):
        patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]  # [B, C, oh, ow]
        out = out + torch.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def bn64(x, weight, bias, eps=1e-5):
    """BatchNorm in training mode: per channel over batch and positions, biased variance."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)


def mse64(a, b):
    return ((a - b) ** 2).sum() / a.numel()


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


# ---- fitnet --------------------------------------------------------------------------------------


@pytest.mark.parametrize("s_shape,t_shape", [((8, 8, 8), (12, 8, 8)), ((8, 8, 8), (12, 4, 4))])
def test_fitnet_matches_reference(s_shape, t_shape):
    b = 4
    f_s = [rand(b, 4, 16, 16, seed=1), rand(b, *s_shape, seed=2).requires_grad_(), rand(b, 16, 2, 2, seed=3)]
    f_t = [rand(b, 6, 16, 16, seed=4), rand(b, *t_shape, seed=5, positive=True), rand(b, 20, 2, 2, seed=6)]
    shapes = FeatureShapes(tuple(tuple(f.shape[1:]) for f in f_s), tuple(tuple(f.shape[1:]) for f in f_t), None, None, 64)
    torch.manual_seed(0)
    reg = LOSSES.get("fitnet").connector(shapes, {})
    logits, y = rand(b, 5, seed=7).requires_grad_(), torch.tensor([0, 1, 2, 3])
    total, terms = run("fitnet", Features(f_s, f_t, connector=reg), logits, y)

    x = f_s[1].detach().double().requires_grad_()
    stride, pad = (1, 0) if s_shape[1:] == t_shape[1:] else (2, 1)  # same size: 1x1; twice: 3x3 stride 2
    r = torch.relu(bn64(conv64(x, reg.conv.weight, stride, pad), reg.bn.weight, reg.bn.bias))
    hint = 100.0 * mse64(r, f_t[1].double())
    torch.testing.assert_close(terms["hint"].double(), hint, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["ce"].double(), ce64(logits.detach(), y), rtol=1e-6, atol=1e-7)
    (g,) = grads(terms["hint"], f_s[1])
    (g64,) = grads(hint, x)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-7)
    assert torch.equal(total, terms["ce"] + terms["hint"])


# ---- at ----------------------------------------------------------------------------------------


def at64(f_s, f_t, p):
    """sum over stage pairs of mean_b mean_pos (Q_s - Q_t)^2, Q = normalised channel mean of |F|^p."""
    total = torch.zeros((), dtype=torch.float64)
    for a, b in zip(f_s, f_t):
        a, b = a.double(), b.double()
        if a.shape[-1] > b.shape[-1]:  # pool the larger map to the smaller by block means
            k = a.shape[-1] // b.shape[-1]
            a = a.unfold(2, k, k).unfold(3, k, k).mean(dim=(-1, -2))
        qa = (a.abs() ** p).mean(1).flatten(1)
        qb = (b.abs() ** p).mean(1).flatten(1)
        qa = qa / torch.sqrt((qa ** 2).sum(1, keepdim=True))
        qb = qb / torch.sqrt((qb ** 2).sum(1, keepdim=True))
        total = total + ((qa - qb) ** 2).sum() / qa.numel()
    return total


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_matches_reference_with_deeper_teacher_and_larger_student_maps(p):
    b = 3
    # teacher has 4 stages, student 3: the deepest 3 of the teacher pair with the student's
    f_s = [rand(b, 4, 16, 16, seed=10).requires_grad_(), rand(b, 8, 8, 8, seed=11).requires_grad_(),
           rand(b, 16, 4, 4, seed=12).requires_grad_()]
    f_t = [rand(b, 5, 32, 32, seed=13), rand(b, 6, 8, 8, seed=14), rand(b, 7, 4, 4, seed=15), rand(b, 9, 2, 2, seed=16)]
    logits, y = rand(b, 5, seed=17), torch.tensor([0, 3, 4])
    _, terms = run("at", Features(f_s, f_t), logits, y, {"p": p})
    xs = [f.detach().double().requires_grad_() for f in f_s]
    ref = 1000.0 * at64(xs, f_t[1:], p)
    torch.testing.assert_close(terms["at"].double(), ref, rtol=1e-5, atol=1e-8)
    for g, g64 in zip(grads(terms["at"], *f_s), grads(ref, *xs)):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-8)


# ---- rkd ---------------------------------------------------------------------------------------


def huber64(a, b):
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()


def rkd64(e_s, e_t):
    def dist(e):
        n = len(e)
        d = torch.zeros(n, n, dtype=torch.float64)
        for i, j in itertools.product(range(n), range(n)):
            if i != j:
                d[i, j] = torch.sqrt(((e[i] - e[j]) ** 2).sum())
        return d / (d.sum() / (n * (n - 1)))

    def angle(e):
        n = len(e)
        a = torch.zeros(n, n, n, dtype=torch.float64)
        for i, j, k in itertools.product(range(n), range(n), range(n)):
            if i != j and k != j:
                u, v = e[i] - e[j], e[k] - e[j]
                a[j, i, k] = (u * v).sum() / (torch.sqrt((u * u).sum()) * torch.sqrt((v * v).sum()))
        return a

    return huber64(dist(e_s), dist(e_t)), huber64(angle(e_s), angle(e_t))


def test_rkd_matches_reference_with_different_embedding_widths():
    b = 5
    e_s, e_t = rand(b, 6, seed=20).requires_grad_(), rand(b, 11, seed=21) * 3
    logits, y = rand(b, 4, seed=22), torch.tensor([0, 1, 2, 3, 0])
    _, terms = run("rkd", Features([], [], e_s, e_t), logits, y)
    x = e_s.detach().double().requires_grad_()
    d, a = rkd64(x, e_t.double())
    torch.testing.assert_close(terms["dist"].double(), 25 * d, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["angle"].double(), 50 * a, rtol=1e-5, atol=1e-7)
    (g,) = grads(terms["dist"] + terms["angle"], e_s)
    (g64,) = grads(25 * d + 50 * a, x)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-6)


def test_rkd_is_zero_when_the_student_embedding_is_a_scaled_rotated_teacher():
    e_t = rand(6, 8, seed=23)
    q, _ = torch.linalg.qr(rand(8, 8, seed=24))
    _, terms = run("rkd", Features([], [], 2.5 * e_t @ q, e_t), rand(6, 3, seed=25), torch.zeros(6, dtype=torch.long))
    assert terms["dist"].item() < 1e-6 and terms["angle"].item() < 1e-6  # relations, not positions


# ---- crd ---------------------------------------------------------------------------------------


def crd_setup(n=40, classes=4, k=7, seed=30):
    labels = torch.arange(n) % classes
    shapes = FeatureShapes((), (), 6, 10, n, labels)
    torch.manual_seed(seed)
    crd = LOSSES.get("crd")
    conn = crd.connector(shapes, crd.resolve({"negatives": k, "embed_dim": 5}))
    conn.begin_epoch(0, seed)
    return conn, labels


def test_crd_negatives_are_other_classes_and_the_positive_comes_first():
    conn, labels = crd_setup(n=50, classes=5, k=1000)
    index = torch.tensor([0, 7, 13, 49])
    idx = conn.sample(index)
    assert idx.shape == (4, 1001) and torch.equal(idx[:, 0], index)
    assert (labels[idx[:, 1:]] != labels[index].unsqueeze(1)).all()
    # uniform over the other classes' images: in 1000 draws from 40 images each appears (misses one: p < 1e-9)
    assert all(len(set(row.tolist())) == 40 for row in idx[:, 1:])


def test_crd_matches_reference():
    b, n, k, tau = 4, 40, 7, 0.07
    conn, labels = crd_setup(n=n, k=k)
    e_s, e_t = rand(b, 6, seed=31).requires_grad_(), rand(b, 10, seed=32)
    index = torch.tensor([3, 9, 22, 35])
    mem_s, mem_t = conn.memory_s.clone().double(), conn.memory_t.clone().double()
    gen_state = conn.gen.get_state()
    idx = conn.sample(index)
    conn.gen.set_state(gen_state)  # the terms draw the same negatives
    _, terms = run("crd", Features([], [], e_s, e_t, index=index, connector=conn), rand(b, 4, seed=33), labels[index])

    x = e_s.detach().double().requires_grad_()

    def embed(e, lin):
        v = e.double() @ lin.weight.double().t() + lin.bias.double()
        return v / torch.sqrt((v * v).sum(1, keepdim=True))

    g_s, g_t = embed(x, conn.embed_s), embed(e_t, conn.embed_t)

    def nce(v, memory):
        scores = torch.exp(torch.einsum("bkd,bd->bk", memory[idx], v) / tau)
        h = scores / (scores.detach().mean() * n)  # Z: a constant, fixed on the first batch
        m_pn = k / n
        loss = 0.0
        for i in range(b):
            loss = loss - torch.log(h[i, 0] / (h[i, 0] + m_pn + 1e-7))
            loss = loss - sum(torch.log(m_pn / (h[i, j] + m_pn + 1e-7)) for j in range(1, k + 1))
        return loss / b

    ref = 0.8 * (nce(g_s, mem_t) + nce(g_t, mem_s))
    torch.testing.assert_close(terms["crd"].double(), ref, rtol=1e-5, atol=1e-6)
    (g,) = grads(terms["crd"], e_s)
    (g64,) = grads(ref, x)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-7)
    # the banks moved: m[n_i] <- normalise(0.5 m[n_i] + 0.5 g(i))
    moved = 0.5 * mem_s[index] + 0.5 * g_s.detach()
    torch.testing.assert_close(conn.memory_s[index].double(), moved / moved.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(conn.memory_t[untouched].double(), mem_t[untouched])


# ---- reviewkd ----------------------------------------------------------------------------------


def hcl64(a, b):
    loss, w, tot = mse64(a, b), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= a.shape[-1]:
            continue
        w /= 2
        k = a.shape[-1] // level
        pa = a.unfold(2, k, k).unfold(3, k, k).mean(dim=(-1, -2))
        pb = b.unfold(2, k, k).unfold(3, k, k).mean(dim=(-1, -2))
        loss, tot = loss + w * mse64(pa, pb), tot + w
    return loss / tot


def nearest64(x, size):
    h = x.shape[-1]
    if h == size:
        return x
    if h < size:
        return x.repeat_interleave(size // h, dim=2).repeat_interleave(size // h, dim=3)
    return x[:, :, :: h // size, :: h // size]


def abf64(block, x, residual, out_size):
    x = bn64(conv64(x, block.conv1[0].weight), block.conv1[1].weight, block.conv1[1].bias)
    if residual is not None:
        residual = nearest64(residual, x.shape[-1])
        z = conv64(torch.cat([x, residual], 1), block.att[0].weight) + block.att[0].bias.double().view(1, -1, 1, 1)
        a = torch.sigmoid(z)
        x = x * a[:, :1] + residual * a[:, 1:]
    fused = x
    y = bn64(conv64(nearest64(x, out_size), block.conv2[0].weight, padding=1), block.conv2[1].weight, block.conv2[1].bias)
    return y, fused


def test_reviewkd_matches_reference_and_warms_up():
    b = 3
    f_s = [rand(b, 4, 8, 8, seed=40).requires_grad_(), rand(b, 8, 4, 4, seed=41).requires_grad_()]
    e_s = rand(b, 8, seed=42).requires_grad_()
    f_t = [rand(b, 3, 16, 16, seed=43), rand(b, 6, 8, 8, seed=44), rand(b, 12, 4, 4, seed=45)]  # one more stage
    e_t = rand(b, 12, seed=46)
    shapes = FeatureShapes(((4, 8, 8), (8, 4, 4)), ((3, 16, 16), (6, 8, 8), (12, 4, 4)), 8, 12, 16)
    torch.manual_seed(1)
    conn = LOSSES.get("reviewkd").connector(shapes, {})
    feats = Features(f_s, f_t, e_s, e_t, connector=conn)
    logits, y = rand(b, 4, seed=47), torch.tensor([0, 1, 2])
    _, terms = run("reviewkd", feats, logits, y, epoch=5)  # warm-up 20: a quarter of the weight

    xs = [f.detach().double().requires_grad_() for f in (*f_s, e_s)]
    student = [xs[0], xs[1], xs[2].view(b, -1, 1, 1)]
    teacher = [f_t[1].double(), f_t[2].double(), e_t.double().view(b, -1, 1, 1)]  # the deepest three
    outs, residual = [], None
    for x, block, t in zip(student[::-1], conn.blocks, teacher[::-1]):
        y_, residual = abf64(block, x, residual, t.shape[-1])
        outs.insert(0, y_)
    ref = 0.25 * sum(hcl64(u, t) for u, t in zip(outs, teacher))
    torch.testing.assert_close(terms["review"].double(), ref, rtol=1e-5, atol=1e-7)
    for g, g64 in zip(grads(terms["review"], *f_s, e_s), grads(ref, *xs)):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-7)


# ---- every feature method ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_methods_declare_taps_and_refuse_a_step_without_features(name):
    m = LOSSES.get(name)
    assert m.taps and m.needs_teacher
    with pytest.raises(ValueError, match=rf"'{name}' needs features"):
        m.loss(rand(2, 3, seed=0), torch.tensor([0, 1]), rand(2, 3, seed=1), m.resolve({}), 1)


def test_defaults_are_the_published_ones():
    want = {"fitnet": {"hint_weight": 100.0, "ce_weight": 1.0},
            "at": {"at_weight": 1000.0, "p": 2.0, "ce_weight": 1.0},
            "rkd": {"distance_weight": 25.0, "angle_weight": 50.0, "ce_weight": 1.0},
            "crd": {"crd_weight": 0.8, "ce_weight": 1.0, "temperature": 0.07, "momentum": 0.5,
                    "negatives": 16384.0, "embed_dim": 128.0},
            "reviewkd": {"review_weight": 1.0, "warmup": 20.0, "ce_weight": 1.0}}
    assert {n: LOSSES.get(n).resolve({}) for n in FEATURE_METHODS} == want
    assert math.isclose(LOSSES.get("crd").resolve({})["temperature"], 0.07)
