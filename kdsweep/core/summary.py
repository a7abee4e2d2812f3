"""RunSummary: what a finished run is remembered by, one typed record for every layer.

The trainer makes it, the study layer adds the comparison with the baseline, the tracking layer
logs it as MLflow metrics (``as_metrics``) and reads it back (``from_metrics``) for the report,
``--register`` and the progress line. Decisions (the trial's value, which trials to confirm) read
``selection()`` only: the validation numbers, never the test split's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Selected:
    """The numbers a decision may read: validation only (the test split when ``selection: test``)."""

    final_acc: float  # at the final epoch
    best_acc: float  # at the best epoch by this same number
    best_epoch: int
    split: str  # "val", or "test" where the study selects on test (selection: test)


@dataclass(frozen=True)
class RunSummary:
    final_epoch: int
    final_test_acc: float  # the scored weights (EMA when EMA is on) at the final epoch: what the report shows
    final_train_acc: float
    num_params: int
    final_test_acc_raw: float | None = None  # raw weights, when EMA is on
    final_test_acc_ema: float | None = None
    final_val_acc: float | None = None  # None: the data has no validation split
    best_val_epoch: int | None = None  # the epoch with the best validation accuracy
    best_val_acc: float | None = None
    best_val_test_acc: float | None = None  # test accuracy at that epoch (report_epoch: best_val)
    selected_delta: float | None = None  # distilled runs: selection accuracy (validation) minus the baseline's
    delta_vs_baseline: float | None = None  # distilled runs: final test accuracy minus the matched baseline's
    delta_vs_teacher: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # anything else logged with it

    def as_metrics(self) -> dict[str, float]:
        """Flat MLflow metrics (None fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        out.update(self.extra)
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> "RunSummary":
        known = {f.name for f in fields(cls)} - {"extra"}
        ints = {"final_epoch", "num_params", "best_val_epoch"}
        values = {k: (int(v) if k in ints else float(v)) for k, v in metrics.items() if k in known}
        values.setdefault("final_epoch", 0)
        values.setdefault("final_train_acc", math.nan)
        values.setdefault("num_params", 0)
        values.setdefault("final_test_acc", math.nan)
        return cls(**values, extra={k: float(v) for k, v in metrics.items() if k not in known})

    def compared_with(self, baseline: "RunSummary", teacher: "RunSummary | None" = None) -> "RunSummary":
        """This run's summary with its differences to its matched baseline (and teacher): the selection
        number's (for decisions) and the test accuracy's (logged for the report and the MLflow UI)."""
        return dataclasses.replace(
            self, selected_delta=self.selection().final_acc - baseline.selection().final_acc,
            delta_vs_baseline=self.final_test_acc - baseline.final_test_acc,
            delta_vs_teacher=None if teacher is None else self.final_test_acc - teacher.final_test_acc)

    def selection(self) -> Selected:
        """Validation numbers for decisions; the test split's only where the study has no validation split."""
        if self.final_val_acc is not None:
            return Selected(self.final_val_acc, self.best_val_acc, self.best_val_epoch, "val")
        return Selected(self.final_test_acc, self.final_test_acc, self.final_epoch, "test")

    def reported_test_acc(self, epoch: str = "final") -> float:
        """Test accuracy at the reported epoch: ``final``, or ``best_val`` (the best epoch by validation)."""
        if epoch == "best_val" and self.best_val_test_acc is not None:
            return self.best_val_test_acc
        return self.final_test_acc
