"""Read a study's runs back from MLflow and build the teacher / student / distilled table.

Accuracies are final-epoch test accuracies (EMA weights when EMA was on). Every row shows
mean +- std over seeds; a change whose mean is no larger than its spread over seeds is flagged.
The teacher row holds one run for a pretrained teacher and one per seed for online teachers.
Rendering (markdown, csv, html with plots) lives in ``render``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from kdsweep.core.searchable import searchables
from kdsweep.errors import TrackingError

# the report's trial columns: every searchable number (recipe values, then each method's params)
SEARCHED = tuple(s.name for s in searchables() if s.kind == "float")


@dataclass
class Row:
    label: str
    arch: str
    params: int
    train_acc: list[float]
    test_acc: list[float]
    delta: list[float] = field(default_factory=list)  # vs matched baseline (distilled) or teacher (baseline)
    epoch: int = 0
    note: str = ""
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # test accuracy per epoch, per run


@dataclass
class TrialPoint:
    trial: str
    params: dict[str, float]  # the searched values (and width)
    test_acc: list[float]  # final test accuracy per seed
    delta: list[float]  # vs baseline, per seed
    num_params: int
    run_ids: list[str]
    on_front: bool = False  # on the Pareto front of accuracy vs parameter count
    method: str = "kd"  # the KD method the trial drew


@dataclass
class Report:
    study: str
    rows: list[Row]
    ema: list[tuple[str, list[float]]]  # (group, final accuracies)
    trials: list[TrialPoint]  # best first
    epoch_note: str
    best_run_id: str  # the single best distilled run (best trial, best seed): what --register takes
    top_n: int = 5
    best_terms: dict[str, list[list[tuple[int, float]]]] = field(default_factory=dict)  # loss_<term> per run, best trial

    @property
    def methods(self) -> list[str]:
        """The methods the trials drew, best first."""
        return list(dict.fromkeys(t.method for t in self.trials))

    def best_of(self, method: str) -> TrialPoint:
        return next(t for t in self.trials if t.method == method)

    @property
    def top(self) -> list[TrialPoint]:
        return self.trials[:self.top_n]

    @property
    def pareto(self) -> list[TrialPoint]:
        """Trials on the front, smallest first; empty when every trial has the same size."""
        if len({t.num_params for t in self.trials}) < 2:
            return []
        return sorted((t for t in self.trials if t.on_front), key=lambda t: t.num_params)


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def spread_note(deltas: list[float]) -> str:
    """Flag a change that is no larger than its own spread over seeds."""
    if len(deltas) > 1 and abs(mean(deltas)) <= std(deltas):
        return "change within the spread over seeds"
    return ""


def mark_pareto(trials: list[TrialPoint]) -> None:
    """On the front: no other trial is at least as accurate and as small, and better in one."""
    for t in trials:
        acc = mean(t.test_acc)
        t.on_front = not any(
            (mean(o.test_acc) >= acc and o.num_params <= t.num_params)
            and (mean(o.test_acc) > acc or o.num_params < t.num_params) for o in trials)


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from kdsweep.tracking.logger import check_reachable, quiet_mlflow_logs

    quiet_mlflow_logs()
    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri)


def curve(client, run_id: str, metric: str | None = None) -> list[tuple[int, float]]:
    """Per-epoch values of ``metric``; by default the test accuracy the run was judged by (EMA weights when logged)."""
    if metric is not None:
        return sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run_id, metric))
    ema = client.get_metric_history(run_id, "test_acc_ema")
    points = ema or client.get_metric_history(run_id, "test_acc")
    return sorted((int(m.step), float(m.value)) for m in points)


def loss_term_curves(client, runs: list) -> dict[str, list[list[tuple[int, float]]]]:
    """Each ``loss_<term>`` metric of ``runs``, per epoch and per run (the method's named terms)."""
    names = sorted({k for r in runs for k in r.data.metrics if k.startswith("loss_")})
    return {name.removeprefix("loss_"): [curve(client, r.info.run_id, name) for r in runs] for name in names}


def load_report(study: str, tracking_uri: str, *, top: int = 5, client=None) -> Report:
    client = client or client_for(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise TrackingError(f"study {study!r}: no MLflow experiment of that name at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'distilled' and attributes.status = 'FINISHED'",
                              max_results=10000)
    if not runs:
        raise TrackingError(f"study {study!r}: no finished distilled runs yet at {tracking_uri}")
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags.get("trial", r.info.run_id), []).append(r)
    trials = [_trial_point(name, rs) for name, rs in by_trial.items()]
    trials.sort(key=lambda t: mean(t.test_acc), reverse=True)
    mark_pareto(trials)
    best = trials[0]
    best_runs = sorted(by_trial[best.trial], key=lambda r: int(r.data.tags.get("seed", 0)))
    cache: dict[str, Any] = {}

    def get(run_id: str):
        if run_id not in cache:
            cache[run_id] = client.get_run(run_id)
        return cache[run_id]

    teachers = [get(r.data.params["teacher_run_id"]) for r in best_runs]  # one per seed (repeats when pretrained)
    baselines = [get(r.data.params["baseline_run_id"]) for r in best_runs]
    unique_teachers = list({t.info.run_id: t for t in teachers}.values())

    def row(label: str, rs: list, delta: list[float]) -> Row:
        d = rs[0].data
        return Row(label=label, arch=f"{d.params.get('arch')} x{d.params.get('width', '1.0')}",
                   params=int(d.metrics.get("num_params", 0)),
                   train_acc=[r.data.metrics.get("final_train_acc", float("nan")) for r in rs],
                   test_acc=[r.data.metrics["final_test_acc"] for r in rs], delta=delta,
                   epoch=int(d.metrics.get("final_epoch", 0)), note=spread_note(delta),
                   curves=[curve(client, r.info.run_id) for r in rs])

    acc = lambda r: r.data.metrics["final_test_acc"]  # noqa: E731
    online = any(t.data.tags.get("mode") == "online" for t in unique_teachers)
    rows = [
        row("Teacher (online, per seed)" if online else "Teacher", unique_teachers, []),
        row("Student (baseline)", baselines, [acc(b) - acc(t) for b, t in zip(baselines, teachers)]),
        row(f"Distilled student (trial {best.trial})", best_runs, [r.data.metrics["delta_vs_baseline"]
                                                                    for r in best_runs]),
    ]
    ema_of = lambda r: float(r.data.params.get("ema_decay", 0))  # noqa: E731
    ema = [("distilled, EMA weights", [acc(r) for r in runs if ema_of(r) > 0]),
           ("same runs, raw weights", [r.data.metrics["final_test_acc_raw"] for r in runs if ema_of(r) > 0]),
           ("distilled, no EMA", [acc(r) for r in runs if ema_of(r) == 0])]
    epochs = sorted({int(r.data.metrics.get("final_epoch", 0)) for r in runs})
    seeds = len(best_runs)
    epoch_note = (f"Accuracies are top-1 on the test split at the final epoch ({', '.join(map(str, epochs))}), "
                  f"EMA weights where EMA is on; "
                  + ("+- is the standard deviation over seeds." if seeds > 1 else
                     "one seed, so no spread is shown: add seeds to judge a change against the noise."))
    best_run = max(best_runs, key=acc)
    return Report(study=study, rows=rows, ema=ema, trials=trials, epoch_note=epoch_note,
                  best_run_id=best_run.info.run_id, top_n=top, best_terms=loss_term_curves(client, best_runs))


def _trial_point(name: str, rs: list) -> TrialPoint:
    p = rs[0].data.params
    values = {k: float(p[k]) for k in SEARCHED if k in p}
    return TrialPoint(trial=name, params=values, test_acc=[r.data.metrics["final_test_acc"] for r in rs],
                      delta=[r.data.metrics["delta_vs_baseline"] for r in rs],
                      num_params=int(rs[0].data.metrics.get("num_params", 0)), run_ids=[r.info.run_id for r in rs],
                      method=p.get("method", "kd"))


def load_optuna_study(study: str, storage: str | None):
    """The Optuna study behind the report, or (None, reason) when it cannot be opened."""
    if not storage:
        return None, "no Optuna storage given (--storage)"
    from kdsweep.stores import sqlite_file

    db = sqlite_file(storage)
    if db is not None and not db.exists():
        return None, f"Optuna storage {storage} does not exist"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=storage), ""
    except KeyError:
        return None, f"no Optuna study {study!r} in the given storage"
    except Exception as exc:  # a storage that cannot be reached: the table still renders
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(storage).render_as_string(hide_password=True)
        except Exception:
            shown = "the given storage"
        return None, f"Optuna storage {shown} could not be opened ({type(exc).__name__})"
