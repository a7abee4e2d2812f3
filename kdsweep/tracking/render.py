"""Reports as markdown, csv or html.

The html page is one self-contained file that works offline: its plots are plotly charts (the
plotly.js they need embedded once, no CDN), a figure without a chart is its PNG as a data URI,
and a click on a table's header sorts the table by that column.

A comparison puts several studies side by side (``kdsweep report --compare A B``): the same three
rows, each study's mean +- std, and the difference to the first study with a note when it is no
larger than the spreads combined (sqrt(std_a^2 + std_b^2)).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math

from kdsweep.tracking import published
from kdsweep.tracking.report import Report, mean, std

HEADER = ["Model", "Architecture", "Params", "Train acc %", "Val acc %", "Test acc %", "Change %",
          "Epoch: final / best by val (its test %)", "Search, same trial", "Note"]
CHANGE_TEXT = ("Change: baseline vs teacher; distilled vs its matched baseline (same width, seed, epochs, recipe), "
               "paired per seed, with the 95% t-interval of the mean gain in brackets.")


def ms(xs: list[float], pct: bool = True) -> str:
    if not xs:
        return "-"
    k = 100.0 if pct else 1.0
    return f"{mean(xs) * k:.2f}" if len(xs) == 1 else f"{mean(xs) * k:.2f} +- {std(xs) * k:.2f}"


def signed(xs: list[float]) -> str:
    if not xs:
        return "-"
    s = f"{mean(xs) * 100:+.2f}"
    return s if len(xs) == 1 else f"{s} +- {std(xs) * 100:.2f}"


def gain_text(row) -> str:
    """``+3.61 +- 0.41 [+2.59, +4.63]``: the paired gain, its spread over seeds and its 95% interval."""
    g = row.gain
    if g is None:
        return signed(row.delta)
    if g.n < 2:
        return f"{100 * g.mean:+.2f}"
    return f"{100 * g.mean:+.2f} +- {100 * g.std:.2f} [{100 * g.low:+.2f}, {100 * g.high:+.2f}]"


def epochs_text(row) -> str:
    if not row.best_epochs:
        return str(row.epoch)
    lo, hi = min(row.best_epochs), max(row.best_epochs)
    best = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"{row.epoch} / {best} ({ms(row.best_test_acc)})"


def table(report: Report) -> list[list[str]]:
    return [[r.label, r.arch, f"{r.params:,}", ms(r.train_acc), ms(r.val_acc), ms(r.test_acc), gain_text(r),
             epochs_text(r), r.search or "-", r.note] for r in report.rows]


def trial_table(trials, *, speed: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per trial. A column per value that differs between these trials (a value they all
    share says nothing); when they mix methods, each trial's own method params share one column.
    When they mix archs (or ``speed``), the arch and its latency get columns too."""
    keys = sorted(k for k in {k for t in trials for k in t.params}
                  if len({t.params.get(k) for t in trials}) > 1 or len(trials) == 1)
    methods = {t.method for t in trials}
    columns = [k for k in keys if "." not in k or len(methods) == 1]

    def own(t) -> str:
        parts = t.method.split("+")  # a combination (kd+at) keeps each param's part: kd.alpha, at.at_weight
        mine = [k for k in sorted(t.params) if k.split(".", 1)[0] in parts and "." in k]
        return ", ".join(f"{k if len(parts) > 1 else k.split('.', 1)[1]}={t.params[k]:.4g}" for k in mine) or "-"

    archs = speed or len({t.arch for t in trials}) > 1
    header = ["trial", "method", *(["arch"] if archs else []), *columns, *(["method params"] if len(methods) > 1 else []),
              "#params", *(["latency ms"] if archs else []), "val acc %", "test acc %", "vs baseline %", "seeds"]
    rows = [[t.trial, t.method, *([t.arch] if archs else []), *[f"{t.params[k]:.4g}" if k in t.params else "-"
                                                                  for k in columns],
             *([own(t)] if len(methods) > 1 else []), f"{t.num_params:,}", *([latency_text(t)] if archs else []),
             ms(t.val_acc), ms(t.test_acc), signed(t.delta), str(len(t.test_acc))] for t in trials]
    return header, rows


def latency_text(t) -> str:
    return "-" if t.latency_ms is None else f"{t.latency_ms:.3g}"


ARCH_HEADER = ["Arch", "Best trial (by val)", "Method", "#params", "Latency ms (batch 1)", "Images/s (batch 64)",
               "Val acc %", "Test acc %", "vs its baseline %", "Seeds"]


def arch_table(report: Report) -> list[list[str]]:
    """The best trial of each arch the search drew; each compared with its own arch's baselines."""
    rows = []
    for arch in report.archs:
        t = report.best_of_arch(arch)
        ips = "-" if t.throughput_ips is None else f"{t.throughput_ips:,.0f}"
        rows.append([arch, t.trial, t.method, f"{t.num_params:,}", latency_text(t), ips, ms(t.val_acc),
                     ms(t.test_acc), signed(t.delta), str(len(t.test_acc))])
    return rows


METHOD_HEADER = ["Method", "Best trial (by val)", "Val acc %", "Test acc %", "vs baseline %", "Seeds", "Its params"]


def method_table(report: Report) -> list[list[str]]:
    """The search seeds' baseline, then the best trial of each method the search drew (mean +- std over seeds)."""
    base = report.search_baseline or report.rows[1]
    rows = [["baseline (ce)", "-", ms(base.val_acc), ms(base.test_acc), "-", str(len(base.test_acc)), "-"]]
    for method in report.methods:
        t = report.best_of(method)
        own = ", ".join(f"{k}={v:.4g}" for k, v in sorted(t.params.items())
                        if k.startswith(f"{method}.") or "." not in k)
        rows.append([method, t.trial, ms(t.val_acc), ms(t.test_acc), signed(t.delta), str(len(t.test_acc)), own])
    return rows


def sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables under the headline table, (title, header, rows), for every format that has sections."""
    out = [("Best per method (search, selected on validation)", METHOD_HEADER, method_table(report))]
    if report.published:
        out.insert(0, (published.title(report), published.HEADER, published.table(report)))
    if len(report.archs) > 1:
        out.append(("Best per architecture (search, selected on validation)", ARCH_HEADER, arch_table(report)))
    if report.ema and report.ema[0][1]:  # the EMA comparison only where some distilled run kept EMA weights
        out.append(("EMA vs no EMA (distilled runs)", ["Group", "Runs", "Test acc %"],
                    [[g, len(xs), ms(xs)] for g, xs in report.ema]))
    out.append(("Top search trials (selected on validation)", *trial_table(report.top)))
    if report.pareto:
        cost = "latency (ms per image, batch 1)" if report.pareto_by == "latency_ms" else "student parameters"
        out.append((f"Pareto front: accuracy vs {cost}",
                    *trial_table(report.pareto, speed=report.pareto_by == "latency_ms")))
    return out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return out + "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)


def render_markdown(report: Report, figures: dict[str, bytes] | None = None) -> str:
    parts = [f"# kdsweep report: {report.study}\n", f"{report.headline}\n", md_table(HEADER, table(report)),
             f"{CHANGE_TEXT}\n{report.epoch_note}\n"]
    for title, header, rows in sections(report):
        parts += [f"## {title}\n", md_table(header, rows)]
    return "\n".join(parts)


def render_csv(report: Report, figures: dict[str, bytes] | None = None) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([report.headline])
    w.writerow(HEADER)
    w.writerows(table(report))
    w.writerow([])
    w.writerow(METHOD_HEADER)
    w.writerows(method_table(report))
    if report.published:
        w.writerow([])
        w.writerow([published.title(report)])
        w.writerow(published.HEADER)
        w.writerows(published.table(report))
    if len(report.archs) > 1:
        w.writerow([])
        w.writerow(ARCH_HEADER)
        w.writerows(arch_table(report))
    return out.getvalue()


def _html_table(header, rows) -> str:
    head = "".join(f"<th title='sort'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figures(figures: dict[str, bytes] | None, notes: list[str] | None = None,
                  charts: dict[str, object] | None = None) -> list[str]:
    """Each figure once: its plotly chart where there is one, else its PNG."""
    charts = charts or {}
    parts = []
    for name, fig in charts.items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f"<figure class='chart' data-name='{html.escape(name)}'>{div}"
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    for name, png in (figures or {}).items():
        if name in charts:
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes or []]
    return (["<h2>Plots</h2>"] + parts) if parts else []


_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
          "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,"
          "th:first-child{text-align:left}img{max-width:100%}.note{color:#666}"
          "table.sortable th{cursor:pointer;user-select:none;background:#f4f4f4}"
          "th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}"
          "figure{margin:1em 0}</style>")

# click a header: sort by that column, numbers by value ("45.20 +- 1.10" by 45.20, "1,234" as 1234),
# "-" last; a second click reverses
_SORT_JS = """<script>
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var key = function (row) {
        var text = row.cells[col].textContent.trim(), num = parseFloat(text.replace(/,/g, ''));
        return isNaN(num) ? text : num;
      };
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), missing = (x === '-') - (y === '-');
        if (missing) return missing;
        var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>"""


def _plotly_js(charts: dict[str, object] | None) -> str:
    """plotly.js, once per page and only when it has charts: the page then works offline."""
    if not charts:
        return ""
    from plotly.offline import get_plotlyjs

    return f"<script>{get_plotlyjs()}</script>"


def _page(title: str, parts: list[str], charts: dict[str, object] | None = None) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
            f"{_plotly_js(charts)}</head><body>" + "".join(parts) + _SORT_JS + "</body></html>\n")


def render_html(report: Report, figures: dict[str, bytes] | None = None, notes: list[str] | None = None,
                *, charts: dict[str, object] | None = None) -> str:
    parts = [f"<h1>kdsweep report: {html.escape(report.study)}</h1>", f"<p><b>{html.escape(report.headline)}</b></p>",
             _html_table(HEADER, table(report)),
             f"<p>{html.escape(CHANGE_TEXT)} {html.escape(report.epoch_note)}</p>"]
    for title, header, rows in sections(report):
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    return _page(f"kdsweep report: {report.study}", parts + _html_figures(figures, notes, charts), charts)


RENDERERS = {"md": render_markdown, "csv": render_csv, "html": render_html}


# ---------------------------------------------------------------- comparisons


def difference_note(a: list[float], b: list[float]) -> str:
    if len(a) < 2 or len(b) < 2:
        return "one seed: spread unknown"
    if abs(mean(b) - mean(a)) <= math.hypot(std(a), std(b)):
        return "difference within the spread over seeds"
    return ""


def compare_table(reports: list[Report]) -> tuple[list[str], list[list[str]]]:
    first = reports[0]
    header = ["Model"] + [f"{r.study} test acc %" for r in reports]
    header += [f"{r.study} - {first.study} %" for r in reports[1:]] + ["Note"]
    rows = []
    for i, row in enumerate(first.rows[:3]):  # teacher, baseline, best distilled
        label = row.label.split(" (trial")[0].split(", trial")[0]  # each study's best trial has its own number
        cells = [label] + [ms(r.rows[i].test_acc) for r in reports]
        notes = []
        for r in reports[1:]:
            a, b = row.test_acc, r.rows[i].test_acc
            cells.append(f"{(mean(b) - mean(a)) * 100:+.2f}")
            note = difference_note(a, b)
            if note:
                notes.append(note if len(reports) == 2 else f"{r.study}: {note}")
        rows.append(cells + ["; ".join(notes)])
    ema_groups = [("EMA: " + g) for g, _ in first.ema]
    for j, g in enumerate(ema_groups):
        rows.append([g] + [ms(r.ema[j][1]) for r in reports] +
                    [f"{(mean(r.ema[j][1]) - mean(first.ema[j][1])) * 100:+.2f}"
                     if r.ema[j][1] and first.ema[j][1] else "-" for r in reports[1:]] + [""])
    return header, rows


def best_settings(reports: list[Report]) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for r in reports for k in r.trials[0].params})
    header = ["study", "best trial", *keys, "test acc %", "vs baseline %"]
    rows = [[r.study, r.trials[0].trial, *[f"{r.trials[0].params[k]:.4g}" if k in r.trials[0].params else "-"
                                           for k in keys], ms(r.trials[0].test_acc), signed(r.trials[0].delta)]
            for r in reports]
    return header, rows


COMPARE_TEXT = ("Each column is one study's best trial (and its teacher and matched baselines); the difference is "
                "to the first study, flagged when no larger than both spreads combined.")


def compare_markdown(reports: list[Report], figures: dict[str, bytes] | None = None) -> str:
    names = " vs ".join(r.study for r in reports)
    return "\n".join([f"# kdsweep comparison: {names}\n", md_table(*compare_table(reports)), COMPARE_TEXT + "\n",
                      "## Best settings\n", md_table(*best_settings(reports))])


def compare_csv(reports: list[Report], figures: dict[str, bytes] | None = None) -> str:
    out = io.StringIO()
    header, rows = compare_table(reports)
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def compare_html(reports: list[Report], figures: dict[str, bytes] | None = None,
                 notes: list[str] | None = None, *, charts: dict[str, object] | None = None) -> str:
    names = " vs ".join(r.study for r in reports)
    parts = [f"<h1>kdsweep comparison: {html.escape(names)}</h1>", _html_table(*compare_table(reports)),
             f"<p>{html.escape(COMPARE_TEXT)}</p>", "<h2>Best settings</h2>", _html_table(*best_settings(reports))]
    return _page(f"kdsweep comparison: {names}", parts + _html_figures(figures, notes, charts), charts)


COMPARE_RENDERERS = {"md": compare_markdown, "csv": compare_csv, "html": compare_html}
