"""The fast training step: graph-mode batches and learning rates equal eager ones; CUDA graphs train the same."""

import warnings

import pytest
import torch

from conftest import kd_config
from kdsweep.core.data import DeviceLoader, synthetic_imageset
from kdsweep.core.loader import EpochDraws
from kdsweep.core.models import build_model
from kdsweep.core.precision import cpu_has_native_bf16, teacher_bf16, uses_bf16
from kdsweep.core.step import graph_blocker, lr_table, resolve_accel
from kdsweep.core.teachers import OnlineTeacher, TableTeacher, table_for
from kdsweep.core.trainer import make_optimizer, make_schedule, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=256, n_test=64, num_classes=4, size=16, seed=1)


def test_accel_modes_per_device():
    assert resolve_accel("auto", torch.device("cpu")) == (False, False)
    assert resolve_accel("auto", torch.device("cuda")) == (False, True)
    assert resolve_accel("compile", torch.device("cpu")) == (True, False)
    assert resolve_accel("compile", torch.device("cuda")) == (True, True)
    assert resolve_accel("graph", torch.device("cpu")) == (False, False)  # graphs are CUDA-only
    with pytest.raises(ValueError, match="choose from"):
        resolve_accel("fast", torch.device("cpu"))


def test_precision_rules_for_the_step_and_the_teacher():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16("auto", gpu) and not uses_bf16("auto", cpu)  # a student's step stays fp32 on the CPU
    assert teacher_bf16("auto", gpu) and teacher_bf16("bf16", cpu)
    assert not teacher_bf16("fp32", gpu) and not teacher_bf16("fp32", cpu)  # fp32 asked: fp32 everywhere


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this system")
    native = bool({"avx512_bf16", "amx_tile"} & set(flags))
    assert cpu_has_native_bf16() == native
    assert teacher_bf16("auto", torch.device("cpu")) == native  # the teacher in bf16 on the CPU only there


@pytest.mark.parametrize("schedule", ["cosine", "constant", "onecycle"])
def test_lr_table_is_the_schedulers_own_sequence(schedule):
    cfg = kd_config(arch="resnet8", width=0.25, epochs=3, lr=0.3, schedule=schedule)
    model = build_model("resnet8", num_classes=4, width=0.25)
    opt = make_optimizer(cfg, model, torch.device("cpu"))
    sched = make_schedule(cfg, opt, 5)
    expected = []
    for _ in range(15):
        expected.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    table = lr_table(opt, lambda o: make_schedule(cfg, o, 5), 15)
    assert table.shape == (15, len(opt.param_groups))
    torch.testing.assert_close(table, torch.tensor(expected, dtype=torch.float32))


def test_device_positions_give_the_eager_batches(data):
    # a captured graph picks its batch from a step counter on the device; it must be the same batch
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=48, device="cpu", mean=data.mean, std=data.std,
                          train=True, seed=3)
    draws = loader.draws(1)
    static = EpochDraws(*(torch.zeros_like(t) for t in (draws.order, draws.dx, draws.dy, draws.flips, draws.views)))
    static.copy_(draws)
    arange = torch.arange(48)
    for k, batch in enumerate(loader.epoch(1)):
        other = loader.batch_at(static, torch.tensor(k) * 48 + arange)
        for name in ("x", "y", "index", "view"):
            assert torch.equal(getattr(batch, name), getattr(other, name)), name
    assert k == len(loader) - 1 == 4


def test_graph_blockers():
    model = build_model("resnet8", num_classes=4, width=0.25)
    sgd = kd_config(arch="resnet8")
    fused = torch.optim.SGD(model.parameters(), lr=0.1, fused=True) if torch.cuda.is_available() else None
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "fused SGD" in graph_blocker(sgd, plain, None)
    if fused is not None:
        assert graph_blocker(sgd, fused, None) is None
        assert "one-cycle" in graph_blocker(kd_config(arch="resnet8", schedule="onecycle"), fused, None)


# ---------------------------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------------------------


def test_graph_asked_for_by_name_but_not_possible_says_why(data, monkeypatch):
    """On CUDA, ``accel: graph`` for a run that cannot be captured warns with the reason; ``auto``
    stays quiet. (CPU here: resolve_accel is made to answer as on CUDA; nothing is captured.)"""
    import kdsweep.core.step as step

    monkeypatch.setattr(step, "resolve_accel", lambda accel, device: (False, True))
    cfg = kd_config(arch="resnet8", width=0.25, epochs=1, batch_size=16, lr=0.05, device="cpu", optimizer="adam")
    model = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width)
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=16, train=True, seed=0, device=torch.device("cpu"),
                          mean=data.mean, std=data.std)
    opt = make_optimizer(cfg, model, torch.device("cpu"))

    def runner(accel: str, **kw):
        return step.StepRunner(cfg, model, opt, make_schedule(cfg, opt, len(loader)),
                               lambda o: make_schedule(cfg, o, len(loader)), None, loader, None, accel=accel, **kw)

    with pytest.warns(UserWarning, match=r"accel='graph': this run trains without a CUDA graph: graph mode needs "
                                         r"the fused SGD optimizer"):
        assert not runner("graph").graph_mode
    cfg = kd_config(arch="resnet8", width=0.25, epochs=1, batch_size=16, lr=0.05, device="cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)  # as on CUDA: no blocker left
    with pytest.warns(UserWarning, match="driven from outside"):
        runner("graph", allow_graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner("auto", allow_graph=False)  # the default: eager where it must be, without a word


def _cfg(**kw):
    base = dict(arch="resnet8", width=0.5, epochs=3, batch_size=32, lr=0.05, alpha=0.9, temperature=4.0,
                ema_decay=0.9, device="cuda")
    return kd_config(**{**base, **kw})


@cuda
@pytest.mark.parametrize("precision,rel", [("fp32", 2e-3), ("bf16", 3e-2)])
def test_graph_mode_trains_like_eager_mode(data, precision, rel):
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4, width=1.0), fold_bn=True)
    cfg = _cfg(precision=precision)
    eager = train(cfg, data, teacher=teacher, accel="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture falls back with a warning
        graph = train(cfg, data, teacher=teacher, accel="graph")
    assert graph.extras["cuda_graph"] == 1.0 and eager.extras["cuda_graph"] == 0.0
    for a, b in zip(eager.history, graph.history):
        assert b.train_loss == pytest.approx(a.train_loss, rel=rel)
        assert b.lr == a.lr  # the host scheduler is advanced to the same place
    # EMA weights moved in graph mode too, and ended close to eager mode's
    for (name, p), q in zip(eager.ema_model.module.named_parameters(), graph.ema_model.module.parameters()):
        torch.testing.assert_close(q, p, rtol=0.1, atol=0.05 if precision == "bf16" else 5e-3, msg=name)


@cuda
def test_table_on_the_gpu_matches_the_online_teacher_in_bf16(data):
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4, width=1.0), fold_bn=True)
    table = table_for(teacher, data, device="cuda", bf16=True, channels_last=True)
    assert table.logits.dtype == torch.bfloat16
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=64, device="cuda", mean=data.mean, std=data.std,
                          train=True, seed=0, channels_last=True)
    source = TableTeacher(table, teacher)
    for batch in loader.epoch(0):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            online = teacher(batch)
        # same inputs, same network; only the batch size (and so the kernels picked) differs
        torch.testing.assert_close(source(batch).float(), online.float(), rtol=2e-2, atol=2e-2)


@cuda
def test_graph_mode_with_the_table_trains(data):
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4, width=1.0), fold_bn=True)
    source = TableTeacher(table_for(teacher, data, device="cuda", bf16=True), teacher)
    result = train(_cfg(epochs=4, width=0.25), data, teacher=source, accel="graph")
    assert result.extras["cuda_graph"] == 1.0
    assert result.history[-1].train_loss < result.history[0].train_loss
