"""A Kubernetes Indexed Job of ``kdsweep study worker``, its ConfigMap (the spec) and its Secret's template.

- Indexed Job, ``completions = parallelism = workers``: one pod per worker; each index is retried
  on its own (``backoffLimitPerIndex``), and an eviction or preemption (``DisruptionTarget``)
  does not count as a failure. Kubernetes allows ``backoffLimitPerIndex`` only with
  ``restartPolicy: Never``: a failed worker is replaced by a new pod. Its trial is failed and
  retried through the study (heartbeat, or the interrupted mark on SIGTERM); the retry resumes
  from its last epoch only where the checkpoints survive the pod: ``--work-pvc``.
- Passwords come from the Secret by ``secretKeyRef``; the manifests hold none. The Secret is
  printed as a template to fill in (or made with ``kubectl create secret``), never applied.
- ``terminationGracePeriodSeconds`` gives the worker the time SLURM's warning gives it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath

from kdsweep.errors import LaunchError
from kdsweep.launch.credentials import MLFLOW_PASSWORD, MLFLOW_USER, PG_PASSWORD
from kdsweep.study.spec import shown

SPEC_DIR, WORK_DIR, DATA_DIR = "/etc/kdsweep", "/work", "/data"
GRACE_SECONDS = 120
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|[KMGTPE]i?)?$")


def dns_name(study: str, suffix: str = "") -> str:
    """``kdsweep-<study>`` as a DNS-1123 label (Job names become pod host names: 63 characters)."""
    base = re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-") or "study"
    return f"kdsweep-{base}"[: 63 - len(suffix)].rstrip("-") + suffix


@dataclass(frozen=True)
class K8sJob:
    study: str
    workers: int
    image: str
    spec_text: str  # the spec file, mounted from a ConfigMap (checked to hold no password)
    args: list[str]  # after ``kdsweep study worker SPEC``
    gpus_per_worker: int = 1
    cpus_per_worker: str | None = None
    mem: str | None = None
    namespace: str | None = None
    backoff_limit_per_index: int = 3
    data_pvc: str | None = None
    work_pvc: str | None = None
    # each run on this many processes in the pod (the worker's --processes), one GPU each
    processes_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise LaunchError(f"--workers={self.workers}: give 1 or more")
        if not self.image or any(c.isspace() for c in self.image) or len(self.image) > 500:
            raise LaunchError(f"--image={shown(self.image, 60)}: give an image reference, e.g. registry/kdsweep-worker:0.1")
        for flag, value in (("--cpus-per-worker", self.cpus_per_worker), ("--mem", self.mem)):
            if value is not None and not QUANTITY.match(value):
                raise LaunchError(f"{flag}={shown(value, 60)}: give a Kubernetes quantity, e.g. 8, 500m, 32Gi")
        for flag, value in (("--namespace", self.namespace), ("--data-pvc", self.data_pvc),
                            ("--work-pvc", self.work_pvc)):
            longest = 63 if flag == "--namespace" else 253  # a DNS label; a volume claim's name
            if value is not None and (not NAME.match(value) or len(value) > longest):
                raise LaunchError(f"{flag}={shown(value, 60)}: not a Kubernetes name (lowercase letters, digits, '-'; "
                                  f"at most {longest})")

    @property
    def name(self) -> str:
        return dns_name(self.study)

    @property
    def secret_name(self) -> str:
        return dns_name(self.study, "-stores")


def _meta(job: K8sJob, name: str) -> dict:
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "kdsweep", "kdsweep.io/study": job.name}}
    if job.namespace:
        meta["namespace"] = job.namespace
    return meta


def config_map(job: K8sJob) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(job, dns_name(job.study, "-spec")),
            "data": {"spec.yaml": job.spec_text}}


def secret_template(job: K8sJob) -> dict:
    """The Secret the pods read; values to fill in (kubectl create secret generic ... --from-literal)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(job, job.secret_name), "type": "Opaque",
            "stringData": {PG_PASSWORD: "<PostgreSQL password of the storage URL>",
                           MLFLOW_USER: "<MLflow user, if the server has basic-auth>",
                           MLFLOW_PASSWORD: "<MLflow password, if the server has basic-auth>"}}


def _secret_env(job: K8sJob) -> list[dict]:
    # PGPASSWORD must be there; the MLflow login only where the server has basic-auth
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": job.secret_name, "key": key,
                                                         **({} if key == PG_PASSWORD else {"optional": True})}}}
            for key in (PG_PASSWORD, MLFLOW_USER, MLFLOW_PASSWORD)]


def indexed_job(job: K8sJob) -> dict:
    resources: dict = {}
    requests = {k: v for k, v in (("cpu", job.cpus_per_worker), ("memory", job.mem)) if v is not None}
    if requests:
        resources["requests"] = requests
    if job.gpus_per_worker:
        resources["limits"] = {"nvidia.com/gpu": str(job.gpus_per_worker)}
    spec_path = str(PurePosixPath(SPEC_DIR) / "spec.yaml")
    mounts = [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}, {"name": "work", "mountPath": WORK_DIR}]
    volumes = [{"name": "spec", "configMap": {"name": dns_name(job.study, "-spec")}},
               {"name": "work", **({"persistentVolumeClaim": {"claimName": job.work_pvc}} if job.work_pvc
                                   else {"emptyDir": {}})}]
    if job.data_pvc:
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": job.data_pvc, "readOnly": True}})
    if job.processes_per_worker > 1:
        # the processes of a run rendezvous on 127.0.0.1 in the pod and pass tensors through /dev/shm,
        # which a container gets at 64 MiB by default: too small for NCCL and DataLoader workers
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    container = {"name": "worker", "image": job.image, "command": ["kdsweep", "study", "worker", spec_path],
                 "args": list(job.args), "workingDir": WORK_DIR, "env": _secret_env(job),
                 "volumeMounts": mounts, **({"resources": resources} if resources else {})}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job, job.name),
        "spec": {
            "completionMode": "Indexed", "completions": job.workers, "parallelism": job.workers,
            "backoffLimitPerIndex": job.backoff_limit_per_index,
            # evicted or preempted pods are not the worker's fault: retried without counting
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
            "template": {
                "metadata": {"labels": _meta(job, job.name)["labels"]},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": GRACE_SECONDS,
                         "containers": [container], "volumes": volumes},
            },
        },
    }


def manifests(job: K8sJob) -> list[dict]:
    """What ``kubectl apply`` gets: the spec's ConfigMap, then the Job."""
    return [config_map(job), indexed_job(job)]


def kubectl_context() -> str | None:
    """The current kubectl context, or None where kubectl or a context is missing."""
    if shutil.which("kubectl") is None:
        return None
    done = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or None if done.returncode == 0 else None


def apply(text: str) -> str:
    """``kubectl apply -f -`` with ``text`` on stdin; returns what kubectl printed."""
    done = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LaunchError(f"kubectl apply: {why}")
    return done.stdout.strip()


def to_yaml(docs: list[dict]) -> str:
    """YAML documents; multi-line strings (the spec) as literal blocks, readable as the file was."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)


def commented(text: str) -> str:
    """``text`` as YAML comments: printed beside the manifests, a template never applied by mistake."""
    return "".join(f"# {line}\n" if line else "#\n" for line in text.splitlines())
