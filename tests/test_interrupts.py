"""Ctrl-C and SIGTERM held until a database call ends: the stopped study's own next write still works."""

import os
import signal
import threading

import optuna
import pytest
from sqlalchemy import event

from kdsweep.interrupts import held, holding
from kdsweep.study.recorder import RunInfo
from kdsweep.study.storage import open_storage
from kdsweep.tracking.logger import MlflowRecorder


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # what the CLI installs for SIGTERM


@pytest.fixture(autouse=True)
def interrupts():
    """Python's own SIGINT handler and the CLI's SIGTERM one, whatever this process inherited
    (a shell's background job starts with SIGINT ignored, and Python then installs none)."""
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_block_is_raised_when_it_ends(sig):
    before = signal.getsignal(sig)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            os.kill(os.getpid(), sig)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    assert signal.getsignal(sig) is before


def test_a_second_signal_is_not_held():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            done.append(2)
    assert done == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_effect_and_other_threads_pass_through():
    assert holding(lambda x: x + 1)(1) == 2
    errors = []

    def in_thread():
        try:
            with held():  # signal.signal would raise ValueError here: held must not call it
                pass
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert errors == []


def _interrupt_on_first(engine, statement_start: str) -> list:
    """Send this process SIGINT as ``engine`` starts the first statement beginning with ``statement_start``."""
    sent = []

    @event.listens_for(engine, "before_cursor_execute")
    def _kill(conn, cursor, statement, parameters, context, executemany):
        if not sent and statement.lstrip().upper().startswith(statement_start):
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGINT)

    return sent


def test_ctrl_c_inside_an_optuna_write_leaves_the_store_writable(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat=60)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    sent = _interrupt_on_first(storage.engine, "INSERT INTO TRIAL_USER_ATTRIBUTES")
    with pytest.raises(KeyboardInterrupt):
        trial.set_user_attr("epoch", 3)
    assert sent  # the interrupt arrived inside the write, and was raised after it
    trial.set_user_attr("interrupted", True)  # what the study does next: no "database is locked"
    attrs = optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs
    assert attrs == {"epoch": 3, "interrupted": True}


def test_ctrl_c_inside_an_mlflow_write_leaves_the_store_writable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = MlflowRecorder(f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "artifacts"),
                         workdir=tmp_path / "work")
    rec.begin_study("s", {"spec": {}})
    run_id = rec.start(RunInfo("teacher", "k", {"arch": "resnet8"}, {"study": "s"}))
    engine = rec.client._inner._tracking_client.store.engine
    sent = _interrupt_on_first(engine, "INSERT INTO METRICS")
    with pytest.raises(KeyboardInterrupt):
        rec.client.log_metric(run_id, "test_acc", 0.5, step=1)
    assert sent
    rec.fail(run_id, "KeyboardInterrupt", killed=True)  # the write that failed with "database is locked"
    run = rec.client.get_run(run_id)
    assert run.data.metrics["test_acc"] == 0.5 and run.info.status == "KILLED"
