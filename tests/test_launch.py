"""kdsweep launch slurm / k8s without a cluster: the printed jobs, the password rules, the manifests
checked strictly against the Kubernetes API schema, and the container's command line run for real.

The real SLURM runs are in test_launch_slurm.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import run_cli, write_spec
from k8s_schema import problems
from kdsweep.cli import main
from kdsweep.launch import k8s

STORE = ["--storage", "postgresql://kd:pg-Secret-9@db.lab:5432/optuna",
         "--tracking-uri", "http://admin:ml-Secret-7@mlflow.lab:5000"]
SECRETS = ("pg-Secret-9", "ml-Secret-7")


@pytest.fixture
def spec(tmp_path):
    # no data here: a dry run leaves the data to the cluster
    return write_spec(tmp_path / "spec.yaml", tmp_path / "nowhere", name="lab")


def invoke(*args: str, cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        os.chdir(old)


def test_slurm_dry_run_prints_an_array_script_without_passwords_and_creates_nothing(spec, tmp_path):
    result = invoke("launch", "slurm", str(spec), "--workers", "4", "--time", "4:00:00", "--mem", "16G",
                    "--partition", "gpu", "--sbatch-arg=--qos=long", "--set", "student.recipe.epochs=2",
                    "--set", "storage=postgresql://kd:pg-Secret-9@other/optuna", *STORE, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    script = result.output
    for line in ("#SBATCH --array=0-3", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120", "#SBATCH --gres=gpu:1",
                 "#SBATCH --time=4:00:00", "#SBATCH --mem=16G", "#SBATCH --partition=gpu", "#SBATCH --qos=long",
                 f"#SBATCH --output={tmp_path}/mlruns/launch/lab/%A_%a.log"):
        assert line in script.splitlines()
    assert "study worker" in script and "--storage postgresql://kd@db.lab:5432/optuna" in script
    assert "--tracking-uri http://mlflow.lab:5000" in script and "--set student.recipe.epochs=2" in script
    assert not any(s in script for s in SECRETS)  # neither password, nor the --set that carried one
    assert not (tmp_path / "mlruns").exists()  # a dry run writes nothing
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_slurm_env_file_must_be_private_and_is_sourced_by_the_job(spec, tmp_path):
    env_file = tmp_path / "stores.env"
    env_file.write_text("# passwords\nPGPASSWORD=pg-Secret-9\nexport MLFLOW_TRACKING_PASSWORD='ml-Secret-7'\n")
    env_file.chmod(0o644)
    args = ("launch", "slurm", str(spec), "--workers", "2", "--env-file", str(env_file),
            "--storage", "postgresql://kd@db.lab/optuna", "--tracking-uri", "http://mlflow.lab:5000", "--dry-run")
    refused = invoke(*args, cwd=tmp_path)
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        f"Error: --env-file={str(env_file)!r}: mode 644 lets other users read its passwords; run chmod 600 {env_file}"]
    env_file.chmod(0o600)
    ok = invoke(*args, cwd=tmp_path)
    assert ok.exit_code == 0, ok.output
    assert f"set -a; . {env_file}; set +a" in ok.output and not any(s in ok.output for s in SECRETS)

    env_file.write_text("PGPASSWORD=pg-Secret-9\npg-Secret-9\n")  # a stray line: its number, never its text
    bad = invoke(*args, cwd=tmp_path)
    assert bad.exit_code == 2 and "line 2 is not KEY=VALUE" in bad.output and "pg-Secret-9" not in bad.output


@pytest.mark.parametrize("args, message", [
    (["--storage", "sqlite:///mlruns/optuna.db"], "storage='sqlite:///mlruns/optuna.db': workers share a study "
                                                  "through PostgreSQL"),
    (["--tracking-uri", "sqlite:///mlruns/mlflow.db"], "tracking_uri='sqlite:///mlruns/mlflow.db': workers log "
                                                       "through an MLflow server"),
    (["--mem", "lots"], "--mem='lots': give a size as sbatch takes it"),
    (["--time", "4h"], "--time='4h': give minutes or [D-]HH:MM:SS"),
    (["--workers", "0"], "--workers=0: give 1 or more"),
    (["--sbatch-arg", "-p gpu"], "--sbatch-arg='-p gpu': give one long sbatch option"),
])
def test_slurm_bad_options_are_one_line_exit_2(spec, tmp_path, args, message):
    base = {"--workers": "2", "--storage": "postgresql://kd@db/optuna", "--tracking-uri": "http://mlflow:5000"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = invoke("launch", "slurm", str(spec), *[x for kv in base.items() for x in kv], "--dry-run", cwd=tmp_path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "mlruns").exists()


def test_slurm_submit_checks_that_the_stores_answer_first(tmp_path, subset_root):
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="lab")
    # a closed loopback port: nothing is written or submitted, and the message names the store
    result = run_cli("launch", "slurm", str(spec), "--workers", "1", "--storage",
                     "postgresql://kd:pg-Secret-9@127.0.0.1:9/optuna", "--tracking-uri", "http://127.0.0.1:9",
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: storage='postgresql://kd@127.0.0.1:9/optuna': PostgreSQL does not answer")
    assert "pg-Secret-9" not in result.stderr + result.stdout and not (tmp_path / "mlruns").exists()


# -- Kubernetes ------------------------------------------------------------------------------

def k8s_docs(output: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(output) if d is not None]  # the Secret template is commented out


def test_k8s_dry_run_prints_an_indexed_job_valid_against_the_api_schema(spec, tmp_path):
    result = invoke("launch", "k8s", str(spec), "--workers", "8", "--image", "registry.lab/kdsweep-worker:0.1",
                    "--gpus-per-worker", "2", "--cpus-per-worker", "8", "--mem", "32Gi", "--data-pvc", "cifar",
                    "--work-pvc", "kdsweep-work", "--namespace", "ml", *STORE, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert not any(s in result.output for s in SECRETS)
    docs = k8s_docs(result.output)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    secret = k8s_docs("\n".join(line[2:] for line in result.output.splitlines()
                                if line.startswith("# ") and ":" in line and not line.startswith("# The")))
    assert [d["kind"] for d in secret] == ["Secret"]
    for doc in [*docs, *secret]:
        assert problems(doc) == []

    job = docs[1]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 8, 8)
    assert job["backoffLimitPerIndex"] == 3
    pod = job["template"]["spec"]
    # the API server allows backoffLimitPerIndex and podFailurePolicy only with restartPolicy Never
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"nvidia.com/gpu": "2"}}
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(refs) == {"PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert {r["name"] for r in refs.values()} == {secret[0]["metadata"]["name"]}
    assert container["args"][:4] == ["--storage", "postgresql://kd@db.lab:5432/optuna",
                                     "--tracking-uri", "http://mlflow.lab:5000"]
    assert container["args"][-2:] == ["--data-root", "/data"]
    assert docs[0]["data"]["spec.yaml"] == spec.read_text()  # the spec file itself, mounted at /etc/kdsweep
    assert all(d["metadata"]["namespace"] == "ml" for d in docs)


def test_schema_check_rejects_unknown_fields_and_wrong_types(spec):
    job = k8s.indexed_job(k8s.K8sJob(study="lab", workers=2, image="img", spec_text="", args=[]))
    assert problems(job) == []
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # no such field
    job["spec"]["completions"] = "2"
    del job["spec"]["template"]["spec"]["containers"][0]["name"]
    assert sorted(problems(job)) == ["Job.spec.completions: '2' is not int",
                                     "Job.spec.template.spec.containers[0].gpus: unknown field of V1Container"]
    job["spec"]["completions"] = 2
    del job["spec"]["template"]["spec"]["containers"][0]["gpus"]
    assert problems(job) and "name" in problems(job)[0]  # a required field missing


def test_k8s_refuses_a_spec_file_that_holds_a_password(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tmp_path, name="lab", storage="postgresql://kd:pg-Secret-9@db/optuna",
                      tracking_uri="http://mlflow:5000")
    result = invoke("launch", "k8s", str(spec), "--workers", "2", "--image", "img", "--dry-run", cwd=tmp_path)
    assert result.exit_code == 2 and "pg-Secret-9" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: {spec} in the ConfigMap: would contain the value of PGPASSWORD; pass the store URLs without "
        "passwords in the spec file and give the passwords by environment"]


def test_k8s_container_command_runs_outside_a_container_against_postgres(tmp_path, subset_root, postgres_db,
                                                                        mlflow_server):
    import sqlalchemy

    optuna_url, tracking = postgres_db("optuna"), mlflow_server()
    student = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}}
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="pod", n_trials=1, student=student)
    result = invoke("launch", "k8s", str(spec), "--workers", "1", "--image", "img", "--gpus-per-worker", "0",
                    "--storage", optuna_url, "--tracking-uri", tracking, "--device", "cpu", "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    config, job = k8s_docs(result.output)
    container = job["spec"]["template"]["spec"]["containers"][0]
    password = sqlalchemy.engine.make_url(optuna_url).password
    assert password not in result.output

    # what the pod would run, with only what a container provides swapped for local things: the
    # ConfigMap's file for its mount, the Secret's value for its env, a folder for /work
    mount = tmp_path / "etc-kdsweep"
    mount.mkdir()
    (mount / "spec.yaml").write_text(config["data"]["spec.yaml"])
    work = tmp_path / "work"
    work.mkdir()
    cmd = [a.replace(k8s.SPEC_DIR, str(mount)) for a in container["command"] + container["args"]]
    assert cmd[0] == "kdsweep"
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    env.update({"PGPASSWORD": password, "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, "-m", "kdsweep", *cmd[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    trials = optuna.load_study(study_name="pod", storage=optuna_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """``path``'s instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def image_files(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Where each COPY puts what: image path -> path in the build context."""
    placed = {}
    for word, rest in instructions:
        if word == "COPY":
            *sources, dest = [a for a in shlex.split(rest) if not a.startswith("--")]
            for src in sources:
                into = dest.endswith("/") or len(sources) > 1
                placed[str(PurePosixPath(dest) / PurePosixPath(src).name) if into else dest.rstrip("/")] = src
    return placed


def pip_targets(instructions: list[tuple[str, str]]) -> list[str]:
    """What the RUN lines give ``pip install`` (flags left out)."""
    targets = []
    for word, rest in instructions:
        if word == "RUN":
            for command in rest.split("&&"):
                argv = shlex.split(command)
                if argv[:2] == ["pip", "install"] or argv[:4] == ["python", "-m", "pip", "install"]:
                    targets += [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
    return targets


def test_worker_image_runs_the_command_the_job_gives():
    from conftest import REPO

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    steps = dockerfile(REPO / "docker" / "worker.Dockerfile")
    last = {word: rest for word, rest in steps}  # the instruction that counts: the last of its kind
    base = next(rest for word, rest in steps if word == "ARG" and rest.startswith("BASE="))
    assert base.startswith("BASE=pytorch/pytorch:") and "cuda" in base  # FROM a CUDA PyTorch base
    assert [rest for word, rest in steps if word == "FROM"] == ["${BASE}"]
    # the image installs kdsweep itself: pip is given the folder the COPYs filled with this repo's
    # project (pyproject.toml, the readme it names, the package), with extras the project has
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    placed = image_files(steps)
    installed = []
    for target in pip_targets(steps):
        folder, _, extras = target.partition("[")
        if placed.get(f"{folder}/pyproject.toml") == "pyproject.toml":
            assert placed.get(f"{folder}/kdsweep") == "kdsweep" and placed.get(f"{folder}/{project['readme']}")
            assert set(extras.rstrip("]").split(",")) <= set(project["optional-dependencies"])
            installed.append(extras.rstrip("]").split(","))
    # once, with the PostgreSQL driver: the workers' store
    assert installed == [["postgres"]], f"pip installs {pip_targets(steps)}, not the copied project"
    # the build context lets those files through (everything else is ignored)
    ignore = (REPO / "docker" / "worker.Dockerfile.dockerignore").read_text().splitlines()
    assert all(f"!{src}" in ignore or f"!{src}/" in ignore for src in placed.values())
    # the Job's command replaces the image's ENTRYPOINT and runs the image's own command: the
    # `kdsweep` script the project installs, in the image's working folder
    job = k8s.indexed_job(k8s.K8sJob(study="lab", workers=1, image="img", spec_text="", args=[]))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert json.loads(last["ENTRYPOINT"]) == []
    cmd = json.loads(last["CMD"])
    assert container["command"][:3] == cmd[:3] == ["kdsweep", "study", "worker"]
    assert project["scripts"][cmd[0]] == "kdsweep.cli:main"
    assert container["workingDir"] == last["WORKDIR"]


def test_slurm_processes_per_worker_gives_the_worker_its_gpus_and_processes(spec, tmp_path):
    result = invoke("launch", "slurm", str(spec), "--workers", "2", "--gpus-per-worker", "4",
                    "--processes-per-worker", "4", *STORE, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "#SBATCH --gres=gpu:4" in lines and "#SBATCH --ntasks=1" in lines  # one task starts the 4 processes
    worker = next(line for line in lines if "study worker" in line and not line.startswith("#"))
    assert "--processes 4" in worker
    assert any("4 data-parallel processes" in line for line in lines if line.startswith("# "))


@pytest.mark.parametrize("args,message", [
    (["--processes-per-worker", "2"], "--processes-per-worker=2 with --gpus-per-worker=1"),
    (["--processes-per-worker", "0"], "'--processes-per-worker': 0 is not in the range x>=1"),
])
def test_processes_per_worker_must_fit_the_gpus(spec, tmp_path, args, message):
    for kind in (["slurm"], ["k8s", "--image", "registry.lab/w:1"]):
        result = invoke("launch", *kind, str(spec), "--workers", "2", *args, *STORE, "--dry-run", cwd=tmp_path)
        assert result.exit_code == 2 and message in result.output, result.output


def test_k8s_processes_per_worker_gives_the_pod_gpus_processes_and_shared_memory(spec, tmp_path):
    result = invoke("launch", "k8s", str(spec), "--workers", "2", "--image", "registry.lab/kdsweep-worker:0.1",
                    "--gpus-per-worker", "2", "--processes-per-worker", "2", *STORE, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    docs = k8s_docs(result.output)
    assert all(problems(d) == [] for d in docs)
    pod = docs[1]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["args"][container["args"].index("--processes") + 1] == "2"
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
