"""Published numbers beside measured ones: the spec's ``published:`` block against a study's report.

Each number the block names (``teacher``, ``student``, a KD method) is matched with the report's
row for it: the teacher row, the baseline student row, and for a method its first distilled row
(the confirmed one when the study confirms, else its best trial by validation in the search).
The measured side is the mean test accuracy over seeds with the 95% t-interval of that mean;
the verdict says whether the published number lies inside that interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdsweep.tracking.report import Report
from kdsweep.tracking.stats import mean_interval


@dataclass(frozen=True)
class PublishedRow:
    name: str  # teacher, student or a method, as the spec's published block names it
    source_row: str  # the report row it is compared with ("" when the study has none)
    published: float  # percent
    measured: list[float]  # test accuracy per seed (fraction), empty when not measured

    @property
    def interval(self) -> tuple[float, float, float]:
        """(mean, low, high) of the measured accuracy in percent; nan where there is no interval."""
        if not self.measured:
            return math.nan, math.nan, math.nan
        m, lo, hi = mean_interval(self.measured)
        return 100 * m, 100 * lo, 100 * hi

    @property
    def difference(self) -> float:
        """Measured minus published, in percentage points."""
        return self.interval[0] - self.published

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "not measured"
        if len(self.measured) < 2:
            return "one run: no interval"
        _, lo, hi = self.interval
        return "inside" if lo <= self.published <= hi else "outside"


def compare(report: Report) -> list[PublishedRow]:
    """One row per number in the report's published block, in the block's order."""
    rows = []
    for name, value in report.published.items():
        if name == "source" or value is None:
            continue
        label, measured = _measured(report, name)
        rows.append(PublishedRow(name, label, float(value), measured))
    return rows


def _measured(report: Report, name: str) -> tuple[str, list[float]]:
    if name == "teacher":
        return report.rows[0].label, report.rows[0].test_acc
    if name == "student":
        return report.rows[1].label, report.rows[1].test_acc
    row = next((r for r in report.rows[2:] if r.method == name), None)
    if row is not None:
        return row.label, row.test_acc
    trial = next((t for t in report.trials if t.method == name), None)
    if trial is not None:
        return f"search trial {trial.trial} ({name}), best by validation", trial.test_acc
    return "", []


HEADER = ["Row", "Measured row", "Published %", "Measured %", "95% interval", "Measured - published", "Published"]


def table(report: Report) -> list[list[str]]:
    out = []
    for r in compare(report):
        m, lo, hi = r.interval
        out.append([r.name, r.source_row or "-", f"{r.published:.2f}", "-" if math.isnan(m) else f"{m:.2f}",
                    "-" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]",
                    "-" if math.isnan(m) else f"{r.difference:+.2f}", r.verdict])
    return out


def title(report: Report) -> str:
    source = report.published.get("source")
    return "Published vs measured" + (f" (published: {source})" if source else "")
