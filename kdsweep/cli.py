"""The kdsweep command line: parse, call the library, turn KdsweepError into one-line exits.

Heavy imports (torch, optuna, mlflow) happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kdsweep.errors import KdsweepError, SpecError

DATA_ROOT_ENV = "KDSWEEP_DATA_ROOT"


class UserError(click.ClickException):
    """Printed as ``Error: <message>`` with exit code 2."""

    exit_code = 2


def fail(exc: KdsweepError) -> UserError:
    if isinstance(exc, SpecError) and len(exc.problems) > 1:
        # every problem on its own line, each naming file, field and value
        return UserError("\n".join(exc.problems))
    return UserError(str(exc))


def spec_overrides(data_root, n_trials, storage, tracking_uri, device, jobs=None, set_=()) -> dict:
    """Flags win over KDSWEEP_DATA_ROOT, which wins over the spec's data root; --set goes under all."""
    return {"data_root": data_root or os.environ.get(DATA_ROOT_ENV) or None, "n_trials": n_trials,
            "storage": storage, "tracking_uri": tracking_uri, "device": device, "jobs": jobs,
            "set": list(set_) or None}


def override_options(f):
    opts = [
        click.option("--data-root", type=click.Path(path_type=Path), help=f"Data folder (beats ${DATA_ROOT_ENV} and the spec)."),
        click.option("--n-trials", type=click.IntRange(min=1), help="Finished trials the study should hold."),
        click.option("--storage", help="Optuna storage URL, e.g. postgresql://user@host/optuna."),
        click.option("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000."),
        click.option("--device", help="auto, cpu, cuda or cuda:N."),
        click.option("--jobs", type=int, help="Trials trained at once in this process, packed on shared "
                                              "batches and teacher forwards (spec field jobs)."),
        click.option("--set", "set_", multiple=True, metavar="KEY.PATH=VALUE",
                     help="Override any spec field, e.g. --set student.recipe.epochs=2 (repeatable; VALUE is YAML)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group()
@click.version_option(package_name="kdsweep")
def main() -> None:
    """Knowledge-distillation sweeps: Optuna search, MLflow tracking, honest reports."""


@main.group()
def study() -> None:
    """Validate and run studies."""


def _load(spec_path: Path, **flags):
    from kdsweep.study.spec import load_spec

    return load_spec(spec_path, spec_overrides(**flags))


@study.command("validate")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@override_options
def study_validate(spec_path: Path, **flags) -> None:
    """Check SPEC without running it and print the resolved settings."""
    import yaml

    try:
        spec = _load(spec_path, **flags)
    except KdsweepError as exc:
        raise fail(exc) from None
    click.echo(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip())
    click.echo(f"# {spec_path}: valid")


@study.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@override_options
def study_run(spec_path: Path, **flags) -> None:
    """Train the teacher once, the baselines, then distilled-student trials; log all to MLflow."""
    _run(spec_path, flags)


@study.command("worker")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@override_options
@click.option("--heartbeat", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between trial heartbeats; a worker silent for 3x this is taken as dead and "
                   "its trial retried. Give every worker the same value.")
def study_worker(spec_path: Path, heartbeat: int, **flags) -> None:
    """Join SPEC's study in PostgreSQL and run trials until it holds n_trials (start one per GPU or machine)."""
    from kdsweep.study.coordination import shared_store_problem

    try:
        spec = _load(spec_path, **flags)
    except KdsweepError as exc:
        raise fail(exc) from None
    problems = [p for p in (shared_store_problem("storage", spec.storage),
                            shared_store_problem("tracking_uri", spec.tracking_uri)) if p]
    if problems:
        raise UserError("\n".join(f"{spec_path}: {p}" for p in problems))
    _run(spec_path, flags, heartbeat=heartbeat)


def resume_command(spec_path: Path, flags: dict, heartbeat: int | None) -> str:
    """The command line that continues this study: same subcommand, spec and flags."""
    import shlex

    args = ["kdsweep", "study", click.get_current_context().info_name, str(spec_path)]
    for name, value in {**flags, "heartbeat": heartbeat}.items():
        if name == "set_":  # --set is repeatable: one flag per item
            for item in value or ():
                args += ["--set", item]
        elif value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(args)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill` (SIGTERM, as batch schedulers send) stops a study as Ctrl-C does


def _run(spec_path: Path, flags: dict, *, heartbeat: int | None = None) -> None:
    import signal

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        spec = _load(spec_path, **flags)
        from kdsweep.progress import ProgressRecorder
        from kdsweep.study.runner import run_study
        from kdsweep.tracking.logger import MlflowRecorder

        recorder = MlflowRecorder(spec.tracking_uri, artifacts=spec.artifacts)
        extra = {} if heartbeat is None else {"heartbeat": heartbeat}
        with ProgressRecorder(recorder, n_runs=spec.n_trials * len(spec.seeds)) as progress:
            outcome = run_study(spec, recorder=progress,
                                on_open=lambda done: progress.already_done(done * len(spec.seeds)), **extra)
    except KdsweepError as exc:
        from kdsweep.errors import DiskFullError, StorageLostError

        if getattr(exc, "resumable", False) or isinstance(exc, (StorageLostError, DiskFullError)):
            # a store went away or filled mid-study: say how to go on once it is back
            raise UserError(f"{exc}\nResume with: {resume_command(spec_path, flags, heartbeat)}") from None
        raise fail(exc) from None
    except KeyboardInterrupt:
        click.echo("Interrupted: finished trials are kept; the trial or training in progress is marked "
                   "interrupted and goes on from its last epoch when you resume. "
                   f"Resume with: {resume_command(spec_path, flags, heartbeat)}", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    teacher = "online teachers" if outcome.teacher_acc is None else f"teacher {outcome.teacher_acc:.4f}"
    click.echo(f"study {outcome.study_name}: {outcome.complete} complete, {outcome.pruned} pruned, "
               f"{outcome.failed} failed; {teacher}; " + _best(outcome))
    if outcome.packed:
        click.echo(f"jobs {spec.jobs}: {sum(outcome.packed)} trainings in {len(outcome.packed)} packed loops "
                   f"(runs per loop: {', '.join(map(str, outcome.packed))})")
    _publish(spec)
    click.echo(f"report: kdsweep report {outcome.study_name} --tracking-uri {spec.tracking_uri}")


def _best(outcome) -> str:
    """The best trial's value and parameters, 4 significant digits (the full values are in Optuna and MLflow)."""
    if outcome.best_value is None:
        return "no trial complete"
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in outcome.best_params.items())
    return f"best trial {outcome.best_trial}: {outcome.best_value:.4f} ({params})"


def _publish(spec) -> None:
    """Log the report and its plots to the study's MLflow parent run; a failure here only warns."""
    from kdsweep.tracking.publish import publish

    try:
        run_id, files = publish(spec.name, spec.tracking_uri, spec.storage)
    except KdsweepError as exc:
        click.echo(f"warning: report not logged to MLflow ({exc}); `kdsweep report` still works", err=True)
        return
    plots = sum(f.startswith("plots/") for f in files)
    click.echo(f"report and {plots} plots logged to MLflow run {run_id} (artifacts report/)")


@main.group()
def teacher() -> None:
    """Train a study's teacher on its own (the seed projects' --mode teacher)."""


@teacher.command("train")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@override_options
@click.option("--out", type=click.Path(path_type=Path), help="Write the weights here "
              "(default mlruns/teachers/STUDY-ARCH-xWIDTH.pt).")
def teacher_train(spec_path: Path, out: Path | None, **flags) -> None:
    """Train (or reuse) only SPEC's teacher, record it in MLflow and save its weights.

    `kdsweep study run SPEC` then reuses it; other studies load it with
    --set teacher.checkpoint=PATH (the seed projects' --mode student).
    """
    try:
        spec = _load(spec_path, **flags)
        from kdsweep.study.runner import train_teacher
        from kdsweep.tracking.logger import MlflowRecorder

        recorder = MlflowRecorder(spec.tracking_uri, artifacts=spec.artifacts)
        trained, path = train_teacher(spec, recorder=recorder, out=out)
    except KdsweepError as exc:
        raise fail(exc) from None
    how = "reused" if trained.reused else "trained"
    click.echo(f"teacher {spec.teacher.arch} x{spec.teacher.width} {how}: final test acc {trained.test_acc:.4f} "
               f"(MLflow run {trained.run_id})")
    click.echo(f"weights: {path}")
    click.echo(f"students: kdsweep study run {spec_path} (reuses it), or in any study: "
               f"--set teacher.checkpoint={path}")


@main.group()
def server() -> None:
    """The MLflow tracking server."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; 0.0.0.0 exposes the UI to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--backend-store-uri", default="sqlite:///mlruns/mlflow.db", show_default=True,
              help="Where runs are stored: a SQLite file or postgresql://USER:PASSWORD@HOST:5432/mlflow.")
@click.option("--artifacts-destination", default="mlruns/artifacts", show_default=True,
              help="Where the server keeps artifacts (checkpoints): a folder or a URI such as s3://bucket/path.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Server processes.")
@click.option("--allowed-hosts", help="Host headers to accept when reached by name, e.g. mlflow.lab:5000.")
def server_start(**opts) -> None:
    """Run a real `mlflow server` in the foreground; prints the UI URL once it answers."""
    from kdsweep.tracking.server import ServerOptions, log_tail, serve

    options = ServerOptions(**opts)
    try:
        code = serve(options, announce=click.echo)
    except KdsweepError as exc:
        raise fail(exc) from None
    if code != 0:
        raise UserError(f"mlflow server stopped with exit code {code}: {log_tail(options.log_file)}")


@main.command("report")
@click.argument("studies", metavar="STUDY...", nargs=-1, required=True)
@click.option("--compare", is_flag=True, help="Put two or more studies side by side (e.g. with and without EMA).")
@click.option("--tracking-uri", default="sqlite:///mlruns/mlflow.db", show_default=True)
@click.option("--storage", default="sqlite:///mlruns/optuna.db", show_default=True,
              help="Optuna storage, for the Optuna plots in --format html.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "html"]), default="md", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@click.option("--register", metavar="NAME", help="Register the best distilled student in the MLflow Model Registry.")
def report(studies: tuple[str, ...], compare: bool, tracking_uri: str, storage: str, fmt: str, out: Path | None,
           register: str | None) -> None:
    """Print the teacher / student / distilled table of STUDY from MLflow (html adds plots)."""
    from kdsweep.tracking import publish, render

    if compare != (len(studies) > 1):
        raise UserError(f"STUDY={' '.join(studies)!r}: give one study, or --compare with two or more")
    if compare and register:
        raise UserError(f"--register={register!r}: registers the best student of one study; drop --compare")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"--tracking-uri={tracking_uri!r}: no such store (run a study first)")
    try:
        if compare:
            from kdsweep.tracking.report import load_report

            reports = [load_report(s, tracking_uri) for s in studies]
            figures, notes = publish.compare_figures(reports) if fmt == "html" else ({}, [])
            extra = {"notes": notes} if fmt == "html" else {}
            text = render.COMPARE_RENDERERS[fmt](reports, figures, **extra)
        else:
            if fmt == "html":
                one, figures, notes = publish.build(studies[0], tracking_uri, storage)
                text = render.render_html(one, figures, notes)
            else:
                from kdsweep.tracking.report import load_report

                one = load_report(studies[0], tracking_uri)
                text = render.RENDERERS[fmt](one)
            if register:
                version, acc = publish.register_best(one, tracking_uri, register)
    except KdsweepError as exc:
        raise fail(exc) from None
    if register:
        click.echo(f"registered {register} version {version.version}: run {one.best_run_id}, "
                   f"final test acc {acc:.4f}", err=True)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")


@main.group()
def data() -> None:
    """Data sets."""


@data.command("download")
@click.argument("name", type=click.Choice(["cifar10", "cifar100", "imagefolder"]))
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Folder to download into.")
def data_download(name: str, root: Path) -> None:
    """Download NAME into ROOT with torchvision's downloader (needs internet)."""
    from kdsweep.core.data import download_dataset

    try:
        path = download_dataset(name, root)
    except KdsweepError as exc:
        raise fail(exc) from None
    click.echo(f"{name} is in {path}")


if __name__ == "__main__":
    main()
