"""Read a study's runs back from MLflow and build the teacher / student / distilled table.

Accuracies are final-epoch test accuracies (EMA weights when EMA was on); with several seeds
each row shows mean +- std over seeds, and a gain smaller than the spread is flagged.
"""

from __future__ import annotations

import csv
import html
import io
import statistics
from dataclasses import dataclass, field

from kdsweep.errors import TrackingError


@dataclass
class Row:
    label: str
    arch: str
    params: int
    train_acc: list[float]
    test_acc: list[float]
    delta: list[float] = field(default_factory=list)  # vs baseline (distilled) or vs teacher
    epoch: int = 0
    note: str = ""


@dataclass
class Report:
    study: str
    rows: list[Row]
    ema: list[tuple[str, list[float]]]  # (group, final accuracies)
    top: list[dict[str, object]]  # best trials with their hyperparameters
    epoch_note: str


def _ms(xs: list[float], pct: bool = True) -> str:
    if not xs:
        return "-"
    k = 100.0 if pct else 1.0
    m = statistics.fmean(xs) * k
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} +- {statistics.stdev(xs) * k:.2f}"


def _signed(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.fmean(xs) * 100
    s = f"{m:+.2f}"
    return s if len(xs) == 1 else f"{s} +- {statistics.stdev(xs) * 100:.2f}"


def load_report(study: str, tracking_uri: str, *, top: int = 5) -> Report:
    from mlflow.tracking import MlflowClient

    from kdsweep.tracking.logger import check_reachable, quiet_mlflow_logs

    quiet_mlflow_logs()
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise TrackingError(f"study {study!r}: no MLflow experiment of that name at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'distilled' and attributes.status = 'FINISHED'",
                              max_results=10000)
    if not runs:
        raise TrackingError(f"study {study!r}: no finished distilled runs yet at {tracking_uri}")
    trials: dict[str, list] = {}
    for r in runs:
        trials.setdefault(r.data.tags.get("trial", r.info.run_id), []).append(r)

    def mean_acc(rs) -> float:
        return statistics.fmean(r.data.metrics["final_test_acc"] for r in rs)

    ranked = sorted(trials.items(), key=lambda kv: mean_acc(kv[1]), reverse=True)
    best_trial, best_runs = ranked[0]
    cache: dict[str, object] = {}

    def get(run_id: str):
        if run_id not in cache:
            cache[run_id] = client.get_run(run_id)
        return cache[run_id]

    teacher = get(best_runs[0].data.params["teacher_run_id"])
    baselines = [get(r.data.params["baseline_run_id"]) for r in best_runs]
    t_acc = teacher.data.metrics["final_test_acc"]

    def row(label, rs, delta, note=""):
        m0 = rs[0].data
        return Row(label=label, arch=f"{m0.params.get('arch')} x{m0.params.get('width', '1.0')}",
                   params=int(m0.metrics.get("num_params", 0)),
                   train_acc=[r.data.metrics.get("final_train_acc", float("nan")) for r in rs],
                   test_acc=[r.data.metrics["final_test_acc"] for r in rs], delta=delta,
                   epoch=int(m0.metrics.get("final_epoch", 0)), note=note)

    base_accs = [b.data.metrics["final_test_acc"] for b in baselines]
    dist_deltas = [r.data.metrics["delta_vs_baseline"] for r in best_runs]
    note = ""
    if len(dist_deltas) > 1 and abs(statistics.fmean(dist_deltas)) < statistics.stdev(dist_deltas):
        note = "gain within the spread over seeds"
    rows = [
        row("Teacher", [teacher], []),
        row("Student (baseline)", baselines, [a - t_acc for a in base_accs]),
        row(f"Distilled student (trial {best_trial})", best_runs, dist_deltas, note),
    ]
    ema_on = [r.data.metrics["final_test_acc"] for r in runs if float(r.data.params.get("ema_decay", 0)) > 0]
    ema_off = [r.data.metrics["final_test_acc"] for r in runs if float(r.data.params.get("ema_decay", 0)) == 0]
    raw_of_ema = [r.data.metrics["final_test_acc_raw"] for r in runs if float(r.data.params.get("ema_decay", 0)) > 0]
    ema = [("distilled, EMA weights", ema_on), ("same runs, raw weights", raw_of_ema), ("distilled, no EMA", ema_off)]
    top_rows = []
    for trial, rs in ranked[:top]:
        p = rs[0].data.params
        top_rows.append({"trial": trial, "temperature": p.get("temperature"), "alpha": p.get("alpha"),
                         "ema_decay": p.get("ema_decay"), "lr": p.get("lr"), "width": p.get("width"),
                         "test_acc": _ms([r.data.metrics["final_test_acc"] for r in rs]),
                         "delta_vs_baseline": _signed([r.data.metrics["delta_vs_baseline"] for r in rs]),
                         "seeds": len(rs)})
    epochs = sorted({int(r.data.metrics.get("final_epoch", 0)) for r in runs})
    epoch_note = (f"Accuracies are top-1 on the test split at the final epoch ({', '.join(map(str, epochs))}), "
                  "EMA weights where EMA is on; +- is the standard deviation over seeds.")
    return Report(study=study, rows=rows, ema=ema, top=top_rows, epoch_note=epoch_note)


HEADER = ["Model", "Architecture", "Params", "Train acc %", "Test acc %", "Change %", "Epoch", "Note"]


def _table(report: Report) -> list[list[str]]:
    return [[r.label, r.arch, f"{r.params:,}", _ms(r.train_acc), _ms(r.test_acc), _signed(r.delta),
             str(r.epoch), r.note] for r in report.rows]


def render_markdown(report: Report) -> str:
    out = io.StringIO()
    out.write(f"# kdsweep report: {report.study}\n\n")
    out.write("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER) + "\n")
    for cells in _table(report):
        out.write("| " + " | ".join(cells) + " |\n")
    out.write(f"\nChange: baseline vs teacher; distilled vs its matched baseline (same width, seed, epochs).\n")
    out.write(f"{report.epoch_note}\n\n## EMA vs no EMA (distilled runs)\n\n| Group | Runs | Test acc % |\n|---|---|---|\n")
    for group, xs in report.ema:
        out.write(f"| {group} | {len(xs)} | {_ms(xs)} |\n")
    out.write("\n## Top trials\n\n")
    if report.top:
        keys = list(report.top[0])
        out.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for t in report.top:
            out.write("| " + " | ".join(str(t[k]) for k in keys) + " |\n")
    return out.getvalue()


def render_csv(report: Report) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(HEADER)
    w.writerows(_table(report))
    return out.getvalue()


def render_html(report: Report) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<h1>kdsweep report: {html.escape(report.study)}</h1>", table(HEADER, _table(report)),
             f"<p>{html.escape(report.epoch_note)}</p>", "<h2>EMA vs no EMA</h2>",
             table(["Group", "Runs", "Test acc %"], [[g, len(xs), _ms(xs)] for g, xs in report.ema])]
    if report.top:
        keys = list(report.top[0])
        parts += ["<h2>Top trials</h2>", table(keys, [[t[k] for k in keys] for t in report.top])]
    return "<!doctype html><html><head><meta charset='utf-8'><title>kdsweep report</title></head><body>" \
        + "".join(parts) + "</body></html>\n"


RENDERERS = {"md": render_markdown, "csv": render_csv, "html": render_html}
