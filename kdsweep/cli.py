"""The kdsweep command line: parse, call the library, turn KdsweepError into one-line exits.

Heavy imports (torch, optuna, mlflow) happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kdsweep.errors import KdsweepError, SpecError
from kdsweep.stores import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, DEFAULT_TRACKING_URI, sqlite_file

DATA_ROOT_ENV = "KDSWEEP_DATA_ROOT"


class PathArg(click.Path):
    """``click.Path`` that refuses a NUL byte as a usage error (``os.stat`` raises ValueError on one, not OSError)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "\x00" in value:
            from kdsweep.study.spec import shown

            self.fail(f"{shown(value, 100)} holds a NUL byte, which no path can", param, ctx)
        return super().convert(value, param, ctx)


class ShortUsageErrors(click.Group):
    """Click quotes a refused value whole (``'aaa...' is not a valid integer range``, ``No such option:
    --aaa...``): a 2,000-character flag made a 2,000-character line. Cut to a few hundred, passwords masked."""

    @staticmethod
    def _cut(exc: click.UsageError) -> None:
        from kdsweep.study.spec import cut

        if len(exc.message) > 300 or "://" in exc.message:
            exc.message = cut(exc.message, 300)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            self._cut(exc)
            raise

    def invoke(self, ctx):
        try:  # the subcommands' arguments are parsed in here
            return super().invoke(ctx)
        except click.UsageError as exc:
            self._cut(exc)
            raise


class UserError(click.ClickException):
    """Printed as ``Error: <message>`` with exit code 2."""

    exit_code = 2


def fail(exc: KdsweepError) -> UserError:
    if isinstance(exc, SpecError) and len(exc.problems) > 1:
        # every problem on its own line, each naming file, field and value
        return UserError("\n".join(exc.problems))
    return UserError(str(exc))


def spec_overrides(data_root, n_trials, storage, tracking_uri, device, jobs=None, set_=(), processes=None) -> dict:
    """Flags win over KDSWEEP_DATA_ROOT, which wins over the spec's data root; --set goes under all."""
    return {"data_root": data_root or os.environ.get(DATA_ROOT_ENV) or None, "n_trials": n_trials,
            "storage": storage, "tracking_uri": tracking_uri, "device": device, "jobs": jobs,
            "set": list(set_) or None, "processes": processes}


def override_options(f):
    opts = [
        click.option("--data-root", type=PathArg(path_type=Path), help=f"Data folder (beats ${DATA_ROOT_ENV} and the spec)."),
        click.option("--n-trials", type=click.IntRange(min=1), help="Finished trials the study should hold."),
        click.option("--storage", help="Optuna storage URL, e.g. postgresql://user@host/optuna."),
        click.option("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000."),
        click.option("--device", help="auto, cpu, cuda or cuda:N."),
        click.option("--jobs", type=int, help="Trials trained at once in this process, packed on shared "
                                              "batches and teacher forwards (spec field jobs)."),
        click.option("--processes", type=int, help="Processes that train each run together, data parallel "
                                                   "(DDP: NCCL on CUDA, gloo on the CPU; spec field processes)."),
        click.option("--set", "set_", multiple=True, metavar="KEY.PATH=VALUE",
                     help="Override any spec field, e.g. --set student.recipe.epochs=2 (repeatable; VALUE is YAML)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group(cls=ShortUsageErrors)
@click.version_option(package_name="kdsweep")
def main() -> None:
    """Knowledge-distillation sweeps: Optuna search, MLflow tracking, honest reports."""


@main.group()
def study() -> None:
    """Validate and run studies."""


def _load(spec_path: Path, **flags):
    from kdsweep.study.spec import load_spec

    return load_spec(spec_path, spec_overrides(**flags))


def http_auth():
    """The login MLflow's client sends to a tracking server, from MLflow's own variables."""
    from kdsweep.api import http_auth as from_env

    return from_env()


def _preflight(spec_path: Path, spec, *, stores=("storage", "tracking_uri"), problems=()):
    """Data, stores, checkpoint and recipe checked before anything is made; returns the loaded data."""
    from kdsweep.study.preflight import preflight

    return preflight(spec, source=str(spec_path), stores=stores, http_auth=http_auth(), problems=problems)


@study.command("validate")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@override_options
def study_validate(spec_path: Path, **flags) -> None:
    """Check SPEC without running it and print the resolved settings."""
    import yaml

    try:
        spec = _load(spec_path, **flags)
    except KdsweepError as exc:
        raise fail(exc) from None
    from kdsweep.study.spec import mask_url

    click.echo(mask_url(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip()))  # no password shown
    click.echo(f"# {spec_path}: valid")


def system_metrics_option(f):
    return click.option("--system-metrics/--no-system-metrics", default=None,
                        help="Log CPU, memory and GPU use of every run to MLflow (default: on against a "
                             "tracking server, off for a local store).")(f)


@study.command("run")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@override_options
@system_metrics_option
def study_run(spec_path: Path, system_metrics: bool | None, **flags) -> None:
    """Train the teacher once, the baselines, then distilled-student trials; log all to MLflow."""
    _run(spec_path, flags, system_metrics=system_metrics)


@study.command("confirm")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@override_options
def study_confirm(spec_path: Path, **flags) -> None:
    """Run (or resume) only the confirmation stage: SPEC's best trials retrained on its confirm.seeds."""
    _run(spec_path, flags, search=False)


@study.command("worker")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@override_options
@system_metrics_option
@click.option("--heartbeat", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between trial heartbeats; a worker silent for 3x this is taken as dead and "
                   "its trial retried. Give every worker the same value.")
def study_worker(spec_path: Path, heartbeat: int, system_metrics: bool | None, **flags) -> None:
    """Join SPEC's study in PostgreSQL and run trials until it holds n_trials (start one per GPU or machine)."""
    from kdsweep.study.probes import shared_store_problem

    try:
        spec = _load(spec_path, **flags)
    except KdsweepError as exc:
        raise fail(exc) from None
    problems = [f"{spec_path}: {p}" for p in (shared_store_problem("storage", spec.storage),
                                              shared_store_problem("tracking_uri", spec.tracking_uri)) if p]
    _run(spec_path, flags, heartbeat=heartbeat, problems=problems,  # reported with the preflight's
         system_metrics=system_metrics)


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


def _run(spec_path: Path, flags: dict, *, heartbeat: int | None = None, search: bool = True, problems=(),
         system_metrics: bool | None = None) -> None:
    import signal

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        spec = _load(spec_path, **flags)
        if not search and spec.confirm is None:
            raise SpecError([f"{spec_path}: confirm is not set: add confirm: {{top_k: 3, seeds: [100, 101, 102]}}"])
        from kdsweep.api import execute  # the Python API's run_study goes this way too

        recorders = []
        outcome = execute(spec, str(spec_path), search=search, problems=problems, heartbeat=heartbeat,
                          system_metrics=system_metrics, on_recorder=recorders.append, on_data=_echo_loader)
        recorder = recorders[0]
    except KdsweepError as exc:
        from kdsweep.errors import DiskFullError, StorageLostError

        if getattr(exc, "resumable", False) or isinstance(exc, (StorageLostError, DiskFullError)):
            # a store went away or filled mid-study: say how to go on once it is back
            raise UserError(f"{exc}\nResume with: {resume_command(spec_path, flags, heartbeat)}") from None
        raise fail(exc) from None
    except KeyboardInterrupt:
        again = resume_command(spec_path, flags, heartbeat)
        if system_metrics is not None:
            again += " --system-metrics" if system_metrics else " --no-system-metrics"
        click.echo("Interrupted: finished trials are kept; the trial or training in progress is marked "
                   "interrupted and goes on from its last epoch when you resume. "
                   f"Resume with: {again}", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    teacher = "online teachers" if outcome.teacher_acc is None else f"teacher {outcome.teacher_acc:.4f}"
    click.echo(f"study {outcome.study_name}: {outcome.complete} complete, {outcome.pruned} pruned, "
               f"{outcome.failed} failed; {teacher}; " + _best(outcome))
    if outcome.packed:
        click.echo(f"jobs {spec.jobs}: {sum(outcome.packed)} trainings in {len(outcome.packed)} packed loops "
                   f"(runs per loop: {', '.join(map(str, outcome.packed))})")
    if outcome.confirmed:
        trials = sorted({c.trial for c in outcome.confirmed})
        which = "the best of each method" if spec.confirm.per_method else "the best"
        click.echo(f"confirmed trials {', '.join(map(str, trials))} ({which} by validation) on seeds "
                   f"{', '.join(map(str, spec.confirm.seeds))}: {len(outcome.confirmed)} runs")
    _publish(spec)
    click.echo(f"report: kdsweep report {outcome.study_name} --tracking-uri {spec.tracking_uri}")
    _echo_runs_url(recorder)


def _echo_loader(data) -> None:
    if data.loader_note:  # data.loader auto on image files: which loader, and why (kdsweep.core.memory)
        click.echo(f"loader: {data.loader_note}")


def _echo_runs_url(recorder) -> None:
    if recorder.runs_url:
        click.echo(f"runs: {recorder.runs_url}")


def _best(outcome) -> str:
    """The best trial's value and parameters, 4 significant digits (the full values are in Optuna and MLflow)."""
    if outcome.best_value is None:
        return "no trial complete"
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in outcome.best_params.items())
    return f"best trial {outcome.best_trial} by validation: {outcome.best_value:.4f} ({params})"


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
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@override_options
@click.option("--out", type=PathArg(path_type=Path), help="Write the weights here "
              "(default mlruns/teachers/STUDY-ARCH-xWIDTH.pt).")
def teacher_train(spec_path: Path, out: Path | None, **flags) -> None:
    """Train (or reuse) only SPEC's teacher, record it in MLflow and save its weights.

    `kdsweep study run SPEC` then reuses it; other studies load it with
    --set teacher.checkpoint=PATH (the seed projects' --mode student).
    """
    try:
        spec = _load(spec_path, **flags)
        data = _preflight(spec_path, spec, stores=("tracking_uri",))  # the teacher needs no Optuna study
        _echo_loader(data)
        from kdsweep.study.runner import train_teacher
        from kdsweep.tracking.logger import MlflowRecorder

        recorder = MlflowRecorder(spec.tracking_uri, artifacts=spec.artifacts)
        trained, path = train_teacher(spec, recorder=recorder, out=out, data=data)
    except KdsweepError as exc:
        raise fail(exc) from None
    how = "reused" if trained.reused else "trained"
    click.echo(f"teacher {spec.teacher.arch} x{spec.teacher.width} {how}: final test acc {trained.summary.final_test_acc:.4f} "
               f"(MLflow run {trained.run_id})")
    click.echo(f"weights: {path}")
    _echo_runs_url(recorder)
    click.echo(f"students: kdsweep study run {spec_path} (reuses it), or in any study: "
               f"--set teacher.checkpoint={path}")


def store_flags_problem(*flags: tuple[str, str, str]) -> None:
    """Refuse store URLs kdsweep does not run on (one line each, exit 2) before anything opens them."""
    from kdsweep.stores import url_problem
    from kdsweep.study.spec import shown

    what = {"storage": "Optuna storage", "tracking_uri": "MLflow tracking URI",
            "backend_store_uri": "the MLflow server's database"}
    problems = [f"{field}={shown(url)} (from {flag}): {what[field]} {problem}" for flag, field, url in flags
                if (problem := url_problem(field, url))]
    if problems:
        raise UserError("\n".join(problems))


@teacher.command("labels")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@override_options
def teacher_labels(spec_path: Path, **flags) -> None:
    """Write SPEC's stored soft labels (FKD): per training image, random-resized crops and the teacher's
    top-k probabilities on each (teacher.stored_labels, or 10 crops and top 10), once; resumes if stopped.

    Trains (or reuses) the teacher first; trials of a study with teacher.stored_labels read the store.
    """
    import time as _time

    try:
        spec = _load(spec_path, **flags)
        data = _preflight(spec_path, spec, stores=("tracking_uri",))
        from kdsweep.core.trainer import resolve_device
        from kdsweep.study.labels import stored_labels
        from kdsweep.study.runner import train_teacher
        from kdsweep.tracking.logger import MlflowRecorder

        recorder = MlflowRecorder(spec.tracking_uri, artifacts=spec.artifacts)
        trained, _ = train_teacher(spec, recorder=recorder, data=data)
        from kdsweep.core.soft_labels import LabelStore
        from kdsweep.study.labels import store_folder

        folder = store_folder(spec, data, trained.model, Path("mlruns"))
        reused = (folder / "meta.json").exists() and LabelStore(folder).complete
        start = _time.perf_counter()
        store = stored_labels(spec, data, trained.model, device=str(resolve_device(spec.device)),
                              workdir=Path("mlruns"))
    except KdsweepError as exc:
        raise fail(exc) from None
    meta = store.meta
    click.echo(f"stored labels: {meta['images']} images x {meta['crops']} crops, top {meta['top_k']} of "
               f"{meta['num_classes']} classes, {store.bytes_per_image:.0f} bytes per image "
               + ("(reused)" if reused else f"({_time.perf_counter() - start:.1f} s)"))
    click.echo(f"store: {store.folder}")


@main.group()
def server() -> None:
    """The MLflow tracking server."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; 0.0.0.0 exposes the UI to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--backend-store-uri", default=DEFAULT_TRACKING_URI, show_default=True,
              help="Where runs are stored: a SQLite file or postgresql://USER:PASSWORD@HOST:5432/mlflow.")
@click.option("--artifacts-destination", default=DEFAULT_ARTIFACTS, show_default=True,
              help="Where the server keeps artifacts (checkpoints): a folder or a URI such as s3://bucket/path.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Server processes.")
@click.option("--allowed-hosts", help="Host headers to accept when reached by name, e.g. mlflow.lab:5000.")
def server_start(**opts) -> None:
    """Run a real `mlflow server` in the foreground; prints the UI URL once it answers."""
    from kdsweep.study.probes import store_problems
    from kdsweep.tracking.server import ServerOptions, log_tail, serve

    store_flags_problem(("--backend-store-uri", "backend_store_uri", opts["backend_store_uri"]))
    options = ServerOptions(**opts)
    if options.backend_store_uri.startswith(("postgresql", "sqlite")):  # log in before the server starts
        problems = store_problems("--backend-store-uri", options.backend_store_uri)
        if problems:
            raise UserError("\n".join(problems))
    try:
        code = serve(options, announce=click.echo)
    except KdsweepError as exc:
        raise fail(exc) from None
    if code != 0:
        raise UserError(f"mlflow server stopped with exit code {code}: {log_tail(options.log_file)}")


@main.command("report")
@click.argument("studies", metavar="STUDY...", nargs=-1, required=True)
@click.option("--compare", is_flag=True, help="Put two or more studies side by side (e.g. with and without EMA).")
@click.option("--tracking-uri", default=DEFAULT_TRACKING_URI, show_default=True)
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True,
              help="Optuna storage, for the Optuna plots in --format html.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "html"]), default="md", show_default=True)
@click.option("--out", type=PathArg(path_type=Path), help="Write to this file instead of stdout.")
@click.option("--register", metavar="NAME", help="Register the best distilled student in the MLflow Model Registry.")
def report(studies: tuple[str, ...], compare: bool, tracking_uri: str, storage: str, fmt: str, out: Path | None,
           register: str | None) -> None:
    """Print the teacher / student / distilled table of STUDY from MLflow (html adds plots)."""
    from kdsweep.tracking import publish, render

    from kdsweep.study.spec import shown

    if compare != (len(studies) > 1):
        raise UserError(f"STUDY={shown(' '.join(studies))}: give one study, or --compare with two or more")
    if compare and register:
        raise UserError(f"--register={shown(register)}: registers the best student of one study; drop --compare")
    store_flags_problem(("--tracking-uri", "tracking_uri", tracking_uri), ("--storage", "storage", storage))
    db = sqlite_file(tracking_uri)
    if db is not None and not db.exists():
        raise UserError(f"--tracking-uri={shown(tracking_uri)}: no such store (run a study first)")
    from kdsweep.study.probes import store_problems

    # MLflow retries a store that does not answer for minutes, and migrates a SQLite file it opens:
    # the store is asked first, so a dead server, a folder or a file that is not SQLite is one line
    problems = store_problems("tracking_uri", tracking_uri, http_auth=http_auth())
    if fmt == "html":  # the Optuna plots read the storage
        problems += store_problems("storage", storage)
    if problems:
        raise UserError("\n".join(f"{p} (from --{p.split('=', 1)[0].replace('_', '-')})" for p in problems))
    try:
        if compare:
            from kdsweep.tracking.report import load_report

            reports = [load_report(s, tracking_uri) for s in studies]
            figures, notes = publish.compare_figures(reports) if fmt == "html" else ({}, [])
            extra = {"notes": notes, "charts": publish.compare_charts(reports)} if fmt == "html" else {}
            text = render.COMPARE_RENDERERS[fmt](reports, figures, **extra)
        else:
            if fmt == "html":
                one, _, text = publish.build_html(studies[0], tracking_uri, storage)
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
@click.option("--root", type=PathArg(path_type=Path), required=True, help="Folder to download into.")
def data_download(name: str, root: Path) -> None:
    """Download NAME into ROOT with torchvision's downloader (needs internet)."""
    from kdsweep.core.data import download_dataset

    try:
        path = download_dataset(name, root)
    except KdsweepError as exc:
        raise fail(exc) from None
    click.echo(f"{name} is in {path}")


@main.group()
def models() -> None:
    """The built-in networks: the names teacher.arch and student.arch take."""


@models.command("list")
def models_list() -> None:
    """Print every built-in model with its parameter count at 10 and 100 classes."""
    from rich.console import Console
    from rich.table import Table

    from kdsweep.core.models.catalog import catalog

    table = Table(caption="Params: trainable, for 10 and 100 classes. Family: its file in kdsweep/core/models/")
    table.add_column("Model", no_wrap=True)
    table.add_column("Params @10", justify="right", no_wrap=True)
    table.add_column("Params @100", justify="right", no_wrap=True)
    table.add_column("Family")
    for entry in catalog((10, 100)):
        table.add_row(entry.name, f"{entry.params[10]:,}", f"{entry.params[100]:,}", entry.family)
    Console().print(table)



@models.command("features")
@click.argument("arch")
@click.option("--image-size", type=click.IntRange(8, 1024), default=32, show_default=True,
              help="Side of the square input the shapes are computed for.")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Channel multiplier of the model.")
@click.option("--num-classes", type=click.IntRange(1), default=10, show_default=True)
def models_features(arch: str, image_size: int, width: float, num_classes: int) -> None:
    """Print ARCH's layer paths with their output shapes, for student.features / teacher.features.

    Layers marked `stage` are the defaults a feature method taps; `embedding` is the classifier,
    whose input is the penultimate embedding."""
    from kdsweep.core.models import MODELS, build_model
    from kdsweep.core.taps import FeatureError, default_stages, embedding_layer, layer_table

    if arch not in MODELS:
        raise UserError(f"ARCH={arch!r}: unknown architecture; choose from {MODELS.names()}")
    try:
        net = build_model(arch, num_classes=num_classes, width=width)
        rows = layer_table(net, image_size)
    except (ValueError, RuntimeError) as exc:  # a width it refuses, an image too small for its pools
        raise UserError(f"{arch} at --image-size {image_size}: {str(exc).splitlines()[0]}") from None
    try:
        stages = set(default_stages(net))
    except FeatureError:
        stages = set()
    head = embedding_layer(net)
    wide = max(len(p) for p, _ in rows)
    for path, shape in rows:
        mark = "  stage" if path in stages else "  embedding" if path == head else ""
        click.echo(f"{path:<{wide}}  {'x'.join(map(str, shape)) or '-'}{mark}")


# -- launch: workers on a cluster (kdsweep/launch/) ------------------------------------------

@main.group()
def launch() -> None:
    """Start a study's workers on a cluster: a SLURM array job or a Kubernetes Indexed Job."""


def cluster_options(f):
    opts = [
        click.option("--workers", type=int, required=True, help="Workers to start, one per array task or pod."),
        click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True,
                     help="GPUs each worker gets (0: a CPU worker)."),
        click.option("--mem", help="Memory per worker (sbatch: 16G; Kubernetes: 16Gi)."),
        click.option("--heartbeat", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Seconds between trial heartbeats, as in study worker."),
        click.option("--dry-run", is_flag=True, help="Print what would be submitted; submit nothing."),
        click.option("--processes-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Processes that train each run of a worker together (DDP, one GPU each; "
                          "the worker's --processes)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _launch_plan(spec_path: Path, flags: dict, *, check_data: bool):
    """The loaded spec and its stores without passwords; store problems are one line each, exit 2.

    ``check_data`` False where the data need only exist on the cluster (a dry run, a volume).
    """
    from kdsweep.launch.credentials import split_stores
    from kdsweep.launch.preflight import scheme_problems
    from kdsweep.study.spec import load_spec

    try:
        spec = load_spec(spec_path, spec_overrides(**flags), check_data=check_data)
    except KdsweepError as exc:
        raise fail(exc) from None
    problems = scheme_problems(spec.storage, spec.tracking_uri)
    if problems:
        raise UserError("\n".join(f"{spec_path}: {p}" for p in problems))
    return spec, split_stores(spec.storage, spec.tracking_uri)


@launch.command("slurm")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@cluster_options
@click.option("--cpus-per-worker", type=click.IntRange(min=1), help="CPU cores per worker (sbatch --cpus-per-task).")
@click.option("--partition", help="sbatch --partition.")
@click.option("--account", help="sbatch --account.")
@click.option("--time", help="Time limit per task, e.g. 4:00:00; near it the trial is marked and the task requeued.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG", help="Passed to sbatch (repeatable), e.g. --qos=long.")
@click.option("--env-file", type=PathArg(path_type=Path), help="KEY=VALUE file (mode 600) the job sources: PGPASSWORD, "
              "MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD.")
@override_options
def launch_slurm(spec_path: Path, workers: int, gpus_per_worker: int, mem, heartbeat: int, dry_run: bool,
                 cpus_per_worker, partition, account, time, sbatch_args, env_file, processes_per_worker: int,
                 **flags) -> None:
    """Submit SPEC's workers as one SLURM array job: `kdsweep study worker` per task, requeued when preempted."""
    from kdsweep.launch import command, credentials, preflight, slurm

    if processes_per_worker != 1:
        flags["processes"] = processes_per_worker
    spec, stores = _launch_plan(spec_path, flags, check_data=not dry_run)
    try:
        command.check_processes(processes_per_worker, gpus_per_worker)
        file_env = credentials.read_env_file(env_file.resolve()) if env_file else {}
        log_dir = Path.cwd() / "mlruns" / "launch" / spec.name
        worker = [sys.executable, "-m", "kdsweep", "study", "worker", command.absolute(spec_path),
                  *command.worker_args(flags, stores, heartbeat, data_root=command.absolute(
                      flags["data_root"] or os.environ.get(DATA_ROOT_ENV)))]
        job = slurm.SlurmJob(study=spec.name, workers=workers, command=worker, workdir=Path.cwd(), log_dir=log_dir,
                             gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, mem=mem,
                             partition=partition, account=account, time=time, sbatch_args=tuple(sbatch_args),
                             env_file=env_file.resolve() if env_file else None,
                             processes_per_worker=processes_per_worker)
        script = slurm.render_script(job)
        credentials.assert_no_secret(script, {**stores.secrets, **file_env}, "the sbatch script")
        if dry_run:
            click.echo(script, nl=False)
            return
        env = {**os.environ, **stores.secrets}  # the job inherits the passwords (--export=ALL)
        preflight.check_answer(stores, {**env, **file_env})
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "worker.sbatch"
        path.write_text(script)
        job_id = slurm.submit(path, env)
    except KdsweepError as exc:
        raise fail(exc) from None
    rel = log_dir.relative_to(Path.cwd())
    click.echo(f"submitted job {job_id}: {workers} workers of study {spec.name} (script {rel / 'worker.sbatch'})")
    click.echo(f"follow: squeue -j {job_id}; tail -f {rel}/{job_id}_*.log")
    click.echo(f"report: kdsweep report {spec.name} --tracking-uri {stores.tracking_uri} --storage {stores.storage}")


@launch.command("k8s")
@click.argument("spec_path", metavar="SPEC", type=PathArg(path_type=Path))
@cluster_options
@click.option("--image", required=True, help="The worker image (docker/worker.Dockerfile), e.g. registry/kdsweep-worker:0.1.")
@click.option("--cpus-per-worker", help="CPU request per worker, e.g. 8 or 500m.")
@click.option("--namespace", help="Namespace of the Job (default: kubectl's).")
@click.option("--backoff-limit-per-index", type=click.IntRange(min=0), default=3, show_default=True,
              help="New pods a worker index may fail before it is given up.")
@click.option("--data-pvc", help="PersistentVolumeClaim with the data, mounted read-only at /data (the data root).")
@click.option("--work-pvc", help="PersistentVolumeClaim (ReadWriteMany) for the workers' checkpoints, mounted at /work.")
@override_options
def launch_k8s(spec_path: Path, workers: int, gpus_per_worker: int, mem, heartbeat: int, dry_run: bool, image: str,
               cpus_per_worker, namespace, backoff_limit_per_index: int, data_pvc, work_pvc,
               processes_per_worker: int, **flags) -> None:
    """Apply SPEC's workers as one Kubernetes Indexed Job (or print it): passwords from a Secret."""
    from kdsweep.launch import command, credentials, k8s

    if processes_per_worker != 1:
        flags["processes"] = processes_per_worker
    spec, stores = _launch_plan(spec_path, flags, check_data=False)
    try:
        command.check_processes(processes_per_worker, gpus_per_worker)
        data_root = k8s.DATA_DIR if data_pvc and not flags["data_root"] else None
        job = k8s.K8sJob(study=spec.name, workers=workers, image=image, spec_text=spec_path.read_text(),
                         args=command.worker_args(flags, stores, heartbeat, data_root=data_root),
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, mem=mem,
                         namespace=namespace, backoff_limit_per_index=backoff_limit_per_index,
                         data_pvc=data_pvc, work_pvc=work_pvc, processes_per_worker=processes_per_worker)
        text = k8s.to_yaml(k8s.manifests(job))
        credentials.assert_no_secret(text, stores.secrets, f"{spec_path} in the ConfigMap")
        secret = k8s.to_yaml([k8s.secret_template(job)])
        context = None if dry_run else k8s.kubectl_context()
        if context is None:
            if not dry_run:
                click.echo("# kubectl or a kubectl context not found: apply these yourself", err=True)
            click.echo(f"# The Secret the pods read, to fill in and create first (kubectl create secret generic "
                       f"{job.secret_name} --from-literal=PGPASSWORD=...):\n{k8s.commented(secret)}---\n{text}",
                       nl=False)
            return
        applied = k8s.apply(text)
    except KdsweepError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise UserError(f"{spec_path}: {exc.strerror}") from None
    ns = f" -n {namespace}" if namespace else ""
    click.echo(f"{applied}\n(context {context})")
    click.echo(f"the pods wait for Secret {job.secret_name}: kubectl{ns} create secret generic {job.secret_name} "
               "--from-literal=PGPASSWORD=... [--from-literal=MLFLOW_TRACKING_USERNAME=... "
               "--from-literal=MLFLOW_TRACKING_PASSWORD=...]")
    click.echo(f"follow: kubectl{ns} get pods -l job-name={job.name}; kubectl{ns} logs -f job/{job.name}")
    click.echo(f"report: kdsweep report {spec.name} --tracking-uri {stores.tracking_uri}")


if __name__ == "__main__":
    main()
