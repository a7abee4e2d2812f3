"""TrainingPool: trainings asked from threads are packed, answered to the right thread, and stopped together."""

import threading
import time

import pytest

from conftest import kd_config
from kdsweep.core.config import TrainConfig
from kdsweep.study.coordination import ProcessLocks
from kdsweep.study.pool import TrainingPool
from kdsweep.core.trainer import train


def cfg(**kw) -> TrainConfig:
    return kd_config(**{**dict(arch="resnet8", width=0.25, epochs=2, batch_size=32, lr=0.05, alpha=0.9), **kw})


def test_threads_get_their_own_results_from_packed_loops(kd_data, kd_teacher):
    cfgs = [cfg(temperature=2.0), cfg(temperature=5.0), cfg(seed=1), cfg(temperature=8.0)]
    pool = TrainingPool(3, gather_seconds=30)  # groups form when every client waits, not by timeout
    out = pool.run([lambda c=c: pool.train(c, kd_data, teacher=kd_teacher) for c in cfgs])
    # seed 0 runs pack (at most 3); the seed-1 run sees other batches and trains alone
    assert sorted(pool.groups) == [1, 3]
    for c, got in zip(cfgs, out):
        assert got.final.train_loss == train(c, kd_data, teacher=kd_teacher).final.train_loss


def test_a_run_error_reaches_its_own_thread_only(kd_data, kd_teacher):
    def boom(m):
        raise ValueError("bad epoch")

    pool = TrainingPool(2, gather_seconds=30)
    out = pool.run([lambda: pool.train(cfg(), kd_data, teacher=kd_teacher, on_epoch=boom),
                    lambda: pool.train(cfg(temperature=3.0), kd_data, teacher=kd_teacher)])
    assert isinstance(out[0], ValueError) and out[1].final.epoch == 2
    assert pool.groups == [2]


def test_an_interrupt_in_the_serving_thread_stops_every_client(kd_data, kd_teacher):
    def ctrl_c(m):
        raise KeyboardInterrupt  # what Ctrl-C raises in the main (serving) thread mid-training

    pool = TrainingPool(2, gather_seconds=30)
    got = []

    def client(**kw):
        try:
            pool.train(cfg(**kw.pop("c", {})), kd_data, teacher=kd_teacher, **kw)
        except BaseException as exc:
            got.append(exc)
            raise

    with pytest.raises(KeyboardInterrupt):
        pool.run([lambda: client(on_epoch=ctrl_c), lambda: client(c={"temperature": 3.0})])
    assert len(got) == 2 and all(isinstance(o, KeyboardInterrupt) for o in got)  # both threads stopped
    with pytest.raises(KeyboardInterrupt, match="stopping"):  # and nothing new is taken
        pool.train(cfg(), kd_data, teacher=kd_teacher)


def test_the_first_failing_job_stops_the_others(kd_data, kd_teacher):
    pool = TrainingPool(2, gather_seconds=0.2)

    def lost_server():
        raise RuntimeError("tracking server gone")

    def later_trial():
        while not pool.closed:  # its next training comes after the other job failed
            time.sleep(0.01)
        return pool.train(cfg(), kd_data, teacher=kd_teacher)

    out = pool.run([lost_server, later_trial])
    assert isinstance(out[0], RuntimeError)
    assert isinstance(out[1], KeyboardInterrupt) and "stopping" in str(out[1])


def test_a_client_blocked_on_a_lock_is_not_waited_for(kd_data, kd_teacher):
    # the baseline case: one thread trains a baseline under its lock, the other waits for that lock
    # (it cannot train before the baseline has); the group starts at once, not gather_seconds later
    pool = TrainingPool(2, gather_seconds=30)
    locks = pool.locks(ProcessLocks())
    holding = threading.Event()

    def trains_under_the_lock():
        with locks.hold("baseline"):
            holding.set()
            return pool.train(cfg(), kd_data, teacher=kd_teacher)

    def waits_for_the_lock():
        holding.wait()
        with locks.hold("baseline"):
            return pool.train(cfg(temperature=3.0), kd_data, teacher=kd_teacher)

    started = time.monotonic()
    pool.run([trains_under_the_lock, waits_for_the_lock])
    assert pool.groups == [1, 1]
    assert time.monotonic() - started < 20  # neither group waited out the 30 s


def test_a_polling_client_is_not_waited_for_but_a_busy_one_is(kd_data, kd_teacher):
    pool = TrainingPool(3, gather_seconds=30)

    def polls_until_the_others_end():
        while pool.groups == []:
            pool.sleep(0.05)

    def busy_then_trains():
        time.sleep(3)  # a trial's light work (an MLflow run opened, a baseline found) on a slow machine
        return pool.train(cfg(temperature=3.0), kd_data, teacher=kd_teacher)

    started = time.monotonic()
    pool.run([lambda: pool.train(cfg(), kd_data, teacher=kd_teacher), busy_then_trains, polls_until_the_others_end])
    assert pool.groups == [2]  # the busy client was waited for; the polling one was not
    assert time.monotonic() - started < 20
