"""Rich progress bars that follow a Recorder's calls: one bar for trials, one per training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdsweep.core.summary import RunSummary
from kdsweep.core.trainer import EpochMetrics
from kdsweep.study.recorder import FinishedRun, Recorder, RunInfo


class ProgressRecorder:
    """Wraps another Recorder and draws progress; forwards every call unchanged."""

    def __init__(self, inner: Recorder, *, n_runs: int, progress: Progress | None = None) -> None:
        self.inner = inner
        self.progress = progress or Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.trials = self.progress.add_task("distilled runs", total=n_runs, info="")
        self.tasks: dict[str, int] = {}
        self.roles: dict[str, str] = {}  # run id -> role: only distilled runs count on the trials bar

    def already_done(self, n_runs: int) -> None:
        """A resumed study: ``n_runs`` of the total finished in an earlier run."""
        self.progress.update(self.trials, completed=n_runs)

    def __enter__(self) -> "ProgressRecorder":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def begin_study(self, study_name: str, params: dict[str, Any]) -> None:
        self.inner.begin_study(study_name, params)

    def find(self, role: str, key: str) -> FinishedRun | None:
        return self.inner.find(role, key)

    def start(self, info: RunInfo) -> str:
        run_id = self.inner.start(info)
        label = f"{info.role} {info.params.get('arch')} x{info.params.get('width')}"
        if "trial" in info.tags:
            label += f" trial {info.tags['trial']}"
        self.tasks[run_id] = self.progress.add_task(label, total=info.params.get("epochs"), info="")
        self.roles[run_id] = info.role
        return run_id

    def log_epoch(self, run_id: str, metrics: EpochMetrics) -> None:
        self.inner.log_epoch(run_id, metrics)
        if run_id in self.tasks:
            self.progress.update(self.tasks[run_id], completed=metrics.epoch,
                                 info=f"{'val' if metrics.val_score is not None else 'test'} {metrics.score:.3f}  "
                                      f"{metrics.images_per_second:,.0f} img/s")

    def _close(self, run_id: str, distilled: bool) -> None:
        task = self.tasks.pop(run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        if distilled:
            self.progress.advance(self.trials)

    def finish(self, run_id: str, summary: RunSummary, checkpoint: Path | None) -> None:
        self.inner.finish(run_id, summary, checkpoint)
        distilled = self.roles.get(run_id) == "distilled"
        if distilled and summary.selected_delta is not None:
            sel = summary.selection()
            self.progress.update(self.trials, info=f"last {sel.split} {sel.final_acc:.3f} "
                                                   f"({summary.selected_delta:+.3f} vs baseline)")
        self._close(run_id, distilled)

    def backfill(self, run_id: str, history: list[EpochMetrics]) -> None:
        backfill = getattr(self.inner, "backfill", None)
        if backfill is not None:
            backfill(run_id, history)

    def fail(self, run_id: str, reason: str, *, killed: bool = False) -> None:
        self.inner.fail(run_id, reason, killed=killed)
        self._close(run_id, distilled=self.roles.get(run_id) == "distilled")

    def end_study(self, summary: dict[str, Any]) -> None:
        self.inner.end_study(summary)
