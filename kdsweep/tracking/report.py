"""Read a study's runs back from MLflow and build the teacher / student / distilled table.

Accuracies are final-epoch test accuracies (EMA weights when EMA was on). Every row shows
mean +- std over seeds; a change whose mean is no larger than its spread over seeds is flagged.
The teacher row holds one run for a pretrained teacher and one per seed for online teachers.
Rendering (markdown, csv, html with plots) lives in ``render``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from kdsweep.core.searchable import searchables
from kdsweep.core.summary import RunSummary
from kdsweep.errors import TrackingError
from kdsweep.tracking.stats import PairedGain, paired_gain

# the report's trial columns: every searchable number (recipe values, then each method's params)
SEARCHED = tuple(s.name for s in searchables() if s.kind == "float")


@dataclass
class Row:
    label: str
    arch: str
    params: int
    train_acc: list[float]
    test_acc: list[float]  # at the reported epoch (report_epoch), one per seed
    delta: list[float] = field(default_factory=list)  # vs matched baseline (distilled) or teacher (baseline), per seed
    epoch: int = 0  # the final epoch
    note: str = ""
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # test accuracy per epoch, per run
    val_acc: list[float] = field(default_factory=list)  # final validation accuracy, per seed
    gain: PairedGain | None = None  # distilled rows: the paired gain over the matched baselines, with its CI
    best_epochs: list[int] = field(default_factory=list)  # best epoch by validation, per seed
    best_test_acc: list[float] = field(default_factory=list)  # test accuracy at that epoch, per seed
    search: str = ""  # confirmed rows: the same trial's numbers during the search (the winner's curse)
    method: str = ""


@dataclass
class TrialPoint:
    trial: str
    params: dict[str, float]  # the searched values (and width)
    test_acc: list[float]  # final test accuracy per seed
    delta: list[float]  # test accuracy vs baseline, per seed
    num_params: int
    run_ids: list[str]
    on_front: bool = False  # on the Pareto front of accuracy vs parameter count
    method: str = "kd"  # the KD method the trial drew
    val_acc: list[float] = field(default_factory=list)  # final validation accuracy per seed: what selected it
    arch: str = ""  # the student's architecture (search.arch draws it)
    latency_ms: float | None = None  # the student's milliseconds per image at batch 1 (study/speed.py)
    throughput_ips: float | None = None  # its images per second at batch 64

    def cost(self, by: str = "params") -> float:
        """What the Pareto front minimises: the parameter count, or the latency (``by="latency_ms"``)."""
        if by == "latency_ms":
            return self.latency_ms if self.latency_ms is not None else math.inf
        return float(self.num_params)

    @property
    def selected_by(self) -> float:
        """What the search ranked this trial by: validation (test only under selection: test)."""
        return mean(self.val_acc) if self.val_acc else mean(self.test_acc)


@dataclass
class Report:
    study: str
    rows: list[Row]  # teacher, baseline, then the distilled rows (confirmed ones when there are any)
    ema: list[tuple[str, list[float]]]  # (group, final accuracies)
    trials: list[TrialPoint]  # search trials, best by validation first
    epoch_note: str
    best_run_id: str  # the single best distilled run (best trial, best seed): what --register takes
    top_n: int = 5
    # each loss_<term> of the best trial's runs, per epoch
    best_terms: dict[str, list[list[tuple[int, float]]]] = field(default_factory=dict)
    selection: str = "val"  # what the search selected on: val, or test (selection: test)
    confirmed: bool = False  # the distilled rows come from the confirmation stage
    report_epoch: str = "final"
    # the matched baselines of the search's seeds (the headline's baseline row is the confirmation
    # seeds' once there is a confirmation stage); the best-per-method table compares with these
    search_baseline: Row | None = None
    # the spec's published: block (row name -> percent, and source), from the study run's tag
    published: dict[str, float | str] = field(default_factory=dict)
    pareto_by: str = "params"  # the front's cost: params, or latency_ms (objective: [val_acc, latency_ms])

    @property
    def top(self) -> list[TrialPoint]:
        return self.trials[:self.top_n]

    @property
    def methods(self) -> list[str]:
        """The methods the trials drew, best (by validation) first."""
        return list(dict.fromkeys(t.method for t in self.trials))

    def best_of(self, method: str) -> TrialPoint:
        return next(t for t in self.trials if t.method == method)

    @property
    def pareto(self) -> list[TrialPoint]:
        """Trials on the front, cheapest first; empty when every trial has the same cost."""
        if len({t.cost(self.pareto_by) for t in self.trials}) < 2:
            return []
        return sorted((t for t in self.trials if t.on_front), key=lambda t: t.cost(self.pareto_by))

    @property
    def archs(self) -> list[str]:
        """The student archs the trials drew, best (by validation) first."""
        return list(dict.fromkeys(t.arch for t in self.trials))

    def best_of_arch(self, arch: str) -> TrialPoint:
        return next(t for t in self.trials if t.arch == arch)

    @property
    def headline(self) -> str:
        """The report's first line: where its numbers come from."""
        if self.selection == "test":
            return ("Selection read the TEST split (selection: test, no validation split): the best trial was "
                    "chosen by the numbers reported below, so they are optimistic.")
        if self.confirmed:
            return ("Trials selected on the validation split; the distilled rows are their confirmation runs "
                    "on fresh seeds, tested on the test split.")
        return ("Trials selected on the validation split, tested on the test split; not confirmed on fresh "
                "seeds (add confirm: to the spec): the best of many trials overstates its gain.")


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def spread_note(deltas: list[float]) -> str:
    """Flag a change that is no larger than its own spread over seeds."""
    if len(deltas) > 1 and abs(mean(deltas)) <= std(deltas):
        return "change within the spread over seeds"
    return ""


def mark_pareto(trials: list[TrialPoint], by: str = "params") -> None:
    """On the front: no other trial is at least as accurate (validation) and as cheap (``by``: its
    parameter count, or its latency), and better in one."""
    for t in trials:
        acc, cost = t.selected_by, t.cost(by)
        t.on_front = not any(
            (o.selected_by >= acc and o.cost(by) <= cost)
            and (o.selected_by > acc or o.cost(by) < cost) for o in trials)


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


class _Runs:
    """The study's MLflow runs, each fetched once."""

    def __init__(self, client, experiment_id: str) -> None:
        self.client, self.experiment_id, self.cache = client, experiment_id, {}

    def search(self, role: str) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.role = '{role}' and attributes.status = 'FINISHED'",
                                       max_results=10000)

    def get(self, run_id: str):
        if run_id not in self.cache:
            self.cache[run_id] = self.client.get_run(run_id)
        return self.cache[run_id]


def _summary(run) -> RunSummary:
    return RunSummary.from_metrics(dict(run.data.metrics))


def _by_trial(runs: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: int(r.data.tags.get("seed", 0))):
        out.setdefault(r.data.tags.get("trial", r.info.run_id), []).append(r)
    return out


def load_report(study: str, tracking_uri: str, *, top: int = 5, client=None) -> Report:
    client = client or client_for(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise TrackingError(f"study {study!r}: no MLflow experiment of that name at {tracking_uri}")
    store = _Runs(client, exp.experiment_id)
    runs = store.search("distilled")
    if not runs:
        raise TrackingError(f"study {study!r}: no finished distilled runs yet at {tracking_uri}")
    parent = store.search("study")
    settings = parent[0].data.params if parent else {}
    published = json.loads(parent[0].data.tags.get("published", "{}")) if parent else {}
    epoch = settings.get("report_epoch", "final")
    selection = settings.get("selection", "val")
    pareto_by = "latency_ms" if settings.get("pareto_metric") == "latency_ms" else "params"

    def acc(r) -> float:
        return _summary(r).reported_test_acc(epoch)

    by_trial = _by_trial(runs)
    trials = [_trial_point(name, rs, store, acc) for name, rs in by_trial.items()]
    # validation: the search's own ranking; a tie goes to the earlier trial, as in the confirmation's choice
    trials.sort(key=lambda t: (-t.selected_by, int(t.trial) if t.trial.isdigit() else math.inf))
    mark_pareto(trials, pareto_by)
    best = trials[0]
    best_runs = by_trial[best.trial]

    def row(label: str, rs: list, *, baselines: list | None = None, teachers: list | None = None,
            search: str = "") -> Row:
        d = rs[0].data
        sums = [_summary(r) for r in rs]
        test = [acc(r) for r in rs]
        gain, delta = None, []
        if baselines is not None:
            base = [acc(b) for b in baselines]
            gain, delta = paired_gain(test, base), [t - b for t, b in zip(test, base)]
        elif teachers is not None:
            delta = [t - acc(te) for t, te in zip(test, teachers)]
        return Row(label=label, arch=f"{d.params.get('arch')} x{d.params.get('width', '1.0')}",
                   params=int(d.metrics.get("num_params", 0)), train_acc=[s.final_train_acc for s in sums],
                   test_acc=test, delta=delta, epoch=int(d.metrics.get("final_epoch", 0)),
                   note=gain.verdict() if gain is not None else spread_note(delta),
                   curves=[curve(client, r.info.run_id) for r in rs],
                   val_acc=[s.final_val_acc for s in sums if s.final_val_acc is not None],
                   gain=gain, best_epochs=[s.best_val_epoch for s in sums if s.best_val_epoch is not None],
                   best_test_acc=[s.best_val_test_acc for s in sums if s.best_val_test_acc is not None],
                   search=search, method=d.params.get("method", ""))

    confirmed = _by_trial(store.search("confirm"))
    shown = confirmed or {best.trial: best_runs}
    first = next(iter(sorted(shown, key=lambda n: -_search_value(shown[n], trials, n))))
    lead = shown[first]
    teachers = [store.get(r.data.params["teacher_run_id"]) for r in lead]  # one per seed (repeats when pretrained)
    baselines = [store.get(r.data.params["baseline_run_id"]) for r in lead]
    unique_teachers = list({t.info.run_id: t for t in teachers}.values())
    online = any(t.data.tags.get("mode") == "online" for t in unique_teachers)
    rows = [row("Teacher (online, per seed)" if online else "Teacher", unique_teachers),
            row("Student (baseline)", baselines, teachers=teachers)]
    seen_methods: set[str] = set()
    for name in sorted(shown, key=lambda n: -_search_value(shown[n], trials, n)):
        rs = shown[name]
        method = rs[0].data.params.get("method", "kd")
        tag = "best" if not seen_methods else ("best " + method if method not in seen_methods else "")
        seen_methods.add(method)
        point = next((t for t in trials if t.trial == name), None)
        if confirmed:
            label = f"Distilled, trial {name} ({method}), confirmed" + (f" [{tag}]" if tag else "")
            search = (f"search: val {100 * mean(point.val_acc):.2f}, test {100 * mean(point.test_acc):.2f} "
                      f"over {len(point.test_acc)} seed(s)") if point is not None and point.val_acc else ""
        else:
            label = f"Distilled student (trial {name}, {method}, best by validation; not confirmed)"
            search = ""
        rows.append(row(label, rs, baselines=[store.get(r.data.params["baseline_run_id"]) for r in rs],
                        search=search))
    ema_of = lambda r: float(r.data.params.get("ema_decay", 0))  # noqa: E731
    ema = [("distilled, EMA weights", [acc(r) for r in runs if ema_of(r) > 0]),
           ("same runs, raw weights", [_summary(r).final_test_acc_raw or math.nan for r in runs if ema_of(r) > 0]),
           ("distilled, no EMA", [acc(r) for r in runs if ema_of(r) == 0])]
    epochs = sorted({int(r.data.metrics.get("final_epoch", 0)) for r in runs})
    seeds = len(lead)
    which = ("the best epoch by validation (report_epoch: best_val)" if epoch == "best_val"
             else f"the final epoch ({', '.join(map(str, epochs))})")
    epoch_note = (f"Accuracies are top-1 on the test split at {which}, EMA weights where EMA is on; "
                  + ("+- is the standard deviation over seeds; the gain is paired per seed, with its 95% t-interval."
                     if seeds > 1 else
                     "one seed, so no spread is shown: add seeds to judge a change against the noise."))
    best_run = max(lead, key=acc)
    search_baseline = (row("Student (baseline)", [store.get(r.data.params["baseline_run_id"]) for r in best_runs])
                       if confirmed else rows[1])
    return Report(study=study, rows=rows, ema=ema, trials=trials, epoch_note=epoch_note,
                  best_run_id=best_run.info.run_id, top_n=top, best_terms=loss_term_curves(client, best_runs),
                  selection=selection, confirmed=bool(confirmed), report_epoch=epoch, search_baseline=search_baseline,
                  published=published, pareto_by=pareto_by)


def _search_value(rs: list, trials: list[TrialPoint], name: str) -> float:
    """A trial's rank in the search (its validation mean); confirmation runs carry it as a param."""
    if "search_value" in rs[0].data.params:
        return float(rs[0].data.params["search_value"])
    point = next((t for t in trials if t.trial == name), None)
    return point.selected_by if point is not None else -math.inf


def _trial_point(name: str, rs: list, store: _Runs, acc) -> TrialPoint:
    p = rs[0].data.params
    metrics = rs[0].data.metrics
    values = {k: float(p[k]) for k in SEARCHED if k in p}
    sums = [_summary(r) for r in rs]
    test = [acc(r) for r in rs]
    base = [acc(store.get(r.data.params["baseline_run_id"])) if "baseline_run_id" in r.data.params else math.nan
            for r in rs]
    return TrialPoint(trial=name, params=values, test_acc=test, delta=[t - b for t, b in zip(test, base)],
                      num_params=int(rs[0].data.metrics.get("num_params", 0)), run_ids=[r.info.run_id for r in rs],
                      method=p.get("method", "kd"),
                      val_acc=[s.final_val_acc for s in sums if s.final_val_acc is not None],
                      arch=p.get("arch", ""), latency_ms=metrics.get("latency_ms"),
                      throughput_ips=metrics.get("throughput_ips"))


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
