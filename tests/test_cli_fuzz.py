"""Fuzz the whole command line: seeded mutations of every command's flags, arguments and files.

``kdsweep study run|validate|worker|confirm``, ``teacher train``, ``report`` and ``launch slurm|k8s
--dry-run`` get store URLs of every scheme and malformed ones, paths that are files, folders,
FIFOs, missing or unreadable, ``--set`` paths and values of every YAML type, numbers out of range
and non-UTF-8 bytes (as a shell hands them to Python: lone surrogates). Each case must exit 0 or 2
with no traceback, at most 10 kB of output and no password in it, create nothing (every case runs
in a folder of its own, listed before and after) and stay within 5 s and 500 MB.

No case trains: the folders hold no data set, so ``run``, ``confirm``, ``worker`` and ``teacher
train`` stop in their preflight (exit 2), after the spec, flags and stores are checked; the exit-0
cases are ``validate`` and the dry runs. As in tests/test_spec_fuzz.py, a process imports kdsweep
once and forks a child per case, so each case's exit status, output, time and peak memory are its
own (one such process with torch for the training commands, one without for the rest); a few
real ``kdsweep`` processes run beside them.
KDSWEEP_FUZZ_SEED and KDSWEEP_CLI_FUZZ_CASES (default 500) pick the cases.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

from test_spec_fuzz import FLOW_LAUGHS, PASSWORD, make_case, problems_of

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("KDSWEEP_CLI_FUZZ_CASES", "500"))
SEED = int(os.environ.get("KDSWEEP_FUZZ_SEED", "14"))
MAX_SECONDS, MAX_BYTES, KILL_AFTER = 5.0, 500 * 2**20, 20

# the data root is a folder without the data set, so no case trains
GOOD = {"name": "fuzz", "seeds": [0], "data": {"root": "."}, "teacher": {"arch": "resnet8", "recipe": {"epochs": 1}},
        "student": {"arch": "resnet8", "recipe": {"epochs": 1}},
        "search": {"lr": {"low": 0.01, "high": 0.1, "log": True}, "kd": {"alpha": {"low": 0.1, "high": 0.9}}},
        "n_trials": 2, "confirm": {"top_k": 1, "seeds": [1]}}
# stores nothing listens on (ports 1 and 9), by IP so no name is looked up; the shared ones are what
# `study worker` and `launch` take, and make a dry run pass
PG = f"postgresql://kdsweep:{PASSWORD}@127.0.0.1:1/optuna"
HTTP = "http://127.0.0.1:9"
URLS = [
    "sqlite:///x.db", "sqlite:///sub/dir/x.db", "sqlite:///", "sqlite://", "sqlite:/x.db", "sqlite:///:memory:",
    "sqlite:///folder", "sqlite:///spec.yaml", "sqlite:///fifo", "sqlite:///file/x.db", "sqlite:///missing/x.db",
    "sqlite:///x.db?mode=ro", "SQLITE:///x.db", "sqlite:///" + "d/" * 200 + "x.db", "sqlite:///\udcff.db",
    PG, "postgresql://127.0.0.1:1/optuna", "postgresql:///optuna", "postgresql+psycopg2://u@127.0.0.1:1/db",
    "postgres://u:pw@127.0.0.1:1/db", f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db", "postgresql://[::1]:1/db",
    f"postgresql://u:{PASSWORD}@[::1/db", "postgresql://u@127.0.0.1:abc/db", "postgresql://",
    HTTP, f"https://u:{PASSWORD}@127.0.0.1:9/", "http://[::1]:9", "http://[::1", "http://", "http:///x",
    "http://127.0.0.1:0", "http://127.0.0.1:70000", "https://localhost:1/" + "p" * 3000, "http:/127.0.0.1:9",
    "HTTP://127.0.0.1:9", "http://127.0.0.1:9/\udcff", f"http://u:{PASSWORD}@127.0.0.1:9 x",
    "file:///tmp/mlruns", "file:./mlruns", "./mlruns", "mlruns", "mysql://u:pw@127.0.0.1:1/db",
    "mssql://127.0.0.1:1", "databricks", "databricks://profile", "s3://bucket/x", "ftp://127.0.0.1:9/",
    "", " ", "\x00", "sqlite:///x.db\x00", "\t", "://", ":", "C:\\mlruns", "\udcff\udcfe", "é://x",
]
PATHS = ["spec.yaml", "missing.yaml", "folder", "fifo", "empty.yaml", "binary.yaml", "dup.yaml", "unreadable.yaml",
         "/dev/null", "/proc/self/mem", "", ".", "folder/", "missing/dir/x", "x" * 300, "\udcff.yaml",
         "spec.yaml\x00", "-", "--help"]
NUMBERS = ["-1", "0", "1", "2", "64", "65", str(2**31), str(2**63), str(10**30), "1.5", "nan", "inf", "-inf",
           "1e3", "0x10", "", " 1", "\u0661", "1_000", "\udcff", "+5", "-0"]
SET_KEYS = ["n_trials", "seeds", "student.recipe.lr", "search.lr", "teacher.arch", "teacher.checkpoint", "data.root",
            "data.dataset", "storage", "tracking_uri", "confirm.seeds", "student.kd.alpha", "search.kd.alpha",
            "jobs", "timeout", "device", "student", "search", "a.b.c", "", ".", "..", "x.", ".x",
            "student..lr", "__class__", "\udcff", "name", "seeds.0", "student.recipe.epochs.x", "search.method"]
# raw YAML text of every type (and the ones a dumper never writes)
SET_VALUES = ["", "~", "null", "true", "yes", "1", "-1", "0x1f", "0o17", "1_000", "1.5", ".nan", ".inf", "-.inf",
              "1.0e400", "1e400", "text", "'quoted'", "[1, 2]", "{a: 1}", "{a: 1, a: 2}", "[{k: 1, k: 2}]",
              "!!binary aGk=", "!!set {a}", "2024-01-01", "2024-13-45", "&a [*a]", "*undefined", "[" * 60,
              "{x: " * 60, "!!python/object/apply:os.system ['echo owned']", FLOW_LAUGHS, "=", "a=b", "\x00",
              "\udcff", "é", "- 1\n- 2", "{<<: {a: 1}, a: 2}", "7" * 5000, f"postgresql://u:{PASSWORD}@127.0.0.1:1/d",
              "[0, 1]", "{low: 0.1, high: 0.01}", "{choices: []}", "{choices: [kd, dkd]}", "resnet9", "cuda:99"]
DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "", "CUDA", "cuda:-1", "tpu", "\x00", "\udcff"]
TEXT = ["x", "", " ", "4:00:00", "16G", "\udcff", "a" * 2000, "--qos=long", "; rm -rf /", "$(echo owned)",
        "\n", "é", "--dry-run", "gpu\nrm -rf ~", "gpu,cpu"]
VALID = {"--data-root": ["."], "--n-trials": ["1", "3"], "--storage": ["sqlite:///x.db", PG],
         "--tracking-uri": ["sqlite:///m.db", HTTP], "--device": ["cpu", "auto"], "--jobs": ["1", "2"],
         "--heartbeat": ["5"], "--workers": ["1", "4"], "--gpus-per-worker": ["0", "1"], "--mem": ["16G"],
         "--cpus-per-worker": ["4"], "--time": ["4:00:00"], "--env-file": ["env600"], "--image": ["img:1"],
         "--backoff-limit-per-index": ["2"], "--partition": ["gpu"], "--namespace": ["ml"]}
VALID_SETS = ["student.recipe.lr=0.05", "n_trials=4", "search.kd.alpha={low: 0.2, high: 0.8}", "seeds=[3, 4]",
              "student.kd.temperature=2", "data.val_split=0.2"]
SPEC_COMMANDS = [["study", "validate"], ["study", "run"], ["study", "confirm"], ["study", "worker"],
                 ["teacher", "train"], ["launch", "slurm"], ["launch", "k8s"]]


def _flags(rng: random.Random, command: list[str]) -> list[str]:
    """Some of ``command``'s flags, each with a value from the lists above."""
    options = {"--data-root": PATHS, "--n-trials": NUMBERS, "--storage": URLS, "--tracking-uri": URLS,
               "--device": DEVICES, "--jobs": NUMBERS, "--set": None}
    if command == ["study", "worker"]:
        options["--heartbeat"] = NUMBERS
    if command == ["teacher", "train"]:
        options["--out"] = PATHS
    if command[0] == "launch":
        options.update({"--workers": NUMBERS, "--gpus-per-worker": NUMBERS, "--mem": TEXT, "--heartbeat": NUMBERS,
                        "--cpus-per-worker": NUMBERS + TEXT})
        if command[1] == "slurm":
            options.update({"--partition": TEXT, "--account": TEXT, "--time": TEXT, "--sbatch-arg": TEXT,
                            "--env-file": PATHS + ["env600", "env644", "envbad"]})
        else:
            options.update({"--image": TEXT, "--namespace": TEXT, "--backoff-limit-per-index": NUMBERS,
                            "--data-pvc": TEXT, "--work-pvc": TEXT})
    args: list[str] = []
    for name in rng.sample(sorted(options), k=min(len(options), rng.choice([0, 1, 1, 2, 3, 4]))):
        valid = rng.random() < 0.4  # half the flags valid, so that some cases pass
        if name == "--set":
            for _ in range(rng.choice([1, 1, 2])):
                args += ["--set", rng.choice(VALID_SETS) if valid else f"{rng.choice(SET_KEYS)}={rng.choice(SET_VALUES)}"]
        else:
            args += [name, rng.choice(VALID.get(name, options[name]) if valid else options[name])]
    return args


def make_cli_case(n: int) -> tuple[list[str], bytes, list[str]]:
    """Case ``n``: (argv after ``kdsweep``, the bytes of its spec.yaml, what was done)."""
    rng = random.Random(SEED * 7_000_003 + n)
    log: list[str] = []
    spec = yaml.safe_dump(GOOD, sort_keys=False).encode()
    if rng.random() < 0.25:  # a mutated shipped spec, from round 2's fuzz
        _, spec, _, spec_log = make_case(rng.randrange(10**6))
        log.append("spec:" + " ".join(spec_log))
    if rng.random() < 0.15:
        report = ["report", rng.choice(["fuzz", "", "x" * 500, "\udcff", "--", "a b", "../x"])]
        if rng.random() < 0.3:
            report += [rng.choice(["fuzz2", "fuzz"]), "--compare"]
        for name in rng.sample(["--tracking-uri", "--storage", "--format", "--out", "--register"], k=rng.randint(1, 3)):
            report += [name, rng.choice({"--tracking-uri": URLS, "--storage": URLS, "--out": PATHS,
                                         "--format": ["md", "csv", "html", "pdf", ""],
                                         "--register": TEXT}[name])]
        return report, spec, log + ["report"]
    command = rng.choice(SPEC_COMMANDS)
    target = "spec.yaml" if rng.random() < 0.7 else rng.choice(PATHS)
    args = [*command, target]
    if command[0] == "launch":
        args += ["--dry-run", "--workers", "2"] + (["--image", "kdsweep-worker:1"] if command[1] == "k8s" else [])
        if rng.random() < 0.6:  # the shared stores a launch needs, so some dry runs pass
            args += ["--storage", PG, "--tracking-uri", HTTP]
    if command == ["study", "worker"] and rng.random() < 0.5:
        args += ["--storage", PG, "--tracking-uri", HTTP]
    args += _flags(rng, command)
    if rng.random() < 0.05:  # an option no command has
        args.append(rng.choice(["--" + "a" * 2000, "--storagex", "-x", f"--{PG}"]))
    log.append(" ".join(command))
    return args, spec, log


def _case_folder(folder: Path, spec: bytes) -> None:
    """The files a case's paths name: a spec, a folder, a FIFO, files that are empty, binary or unreadable."""
    folder.mkdir()
    (folder / "spec.yaml").write_bytes(spec)
    (folder / "folder").mkdir()
    (folder / "file").write_text("not a folder\n")
    os.mkfifo(folder / "fifo")  # opening it for reading waits for a writer that never comes
    (folder / "empty.yaml").write_bytes(b"")
    (folder / "binary.yaml").write_bytes(b"name: x\n\xff\xfe\x00\x80" * 10)
    (folder / "dup.yaml").write_text("name: x\nteacher: {arch: resnet8}\nstudent: {arch: resnet8}\nname: y\n")
    (folder / "unreadable.yaml").write_text("name: x\n")
    (folder / "unreadable.yaml").chmod(0)  # unreadable, unless the tests run as root
    for name, mode, text in [("env600", 0o600, f"PGPASSWORD={PASSWORD}\n"), ("env644", 0o644, "PGPASSWORD=x\n"),
                             ("envbad", 0o600, f"not a line {PASSWORD}\n\xff\n")]:
        (folder / name).write_text(text, errors="surrogateescape")
        (folder / name).chmod(mode)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# A process imports everything a command may (torch, MLflow, Optuna) once, then forks a child per
# case: in its own folder, output to its own file, killed if it outlives KILL_AFTER seconds.
# Two such parents: forking one that holds torch costs ~60 ms (its 700 MB of page tables), so the
# commands that never reach torch (validate, report, launch) fork from one without it.
LIGHT = ("mlflow", "optuna", "kdsweep.cli", "kdsweep.study.probes", "kdsweep.launch.command", "kdsweep.launch.k8s",
         "kdsweep.launch.slurm", "kdsweep.launch.credentials", "kdsweep.launch.preflight", "kdsweep.tracking.publish",
         "kdsweep.tracking.render", "kdsweep.tracking.report")
HEAVY = (*LIGHT, "kdsweep.study.preflight", "kdsweep.study.runner", "kdsweep.tracking.logger", "kdsweep.progress")
TRAINING = (["study", "run"], ["study", "confirm"], ["study", "worker"], ["teacher", "train"])
FORKS = """
import importlib, json, os, signal, sys, time, traceback
import kdsweep.cli
for module in sys.argv[4].split(","):  # imported once, before the forks
    importlib.import_module(module)
cases, outs, kill_after = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
def run(args, cwd, out):
    pid = os.fork()
    if pid == 0:  # the child: `kdsweep ARGS` in `cwd`, its stdout and stderr going to `out`
        signal.alarm(kill_after)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os.chdir(cwd)
        try:
            kdsweep.cli.main(args, prog_name="kdsweep")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            sys.stdout.flush(), sys.stderr.flush()
        except BaseException:
            traceback.print_exc(file=open(fd, "w", closefd=False))
            code = 1
        os._exit(code)
    t0 = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - t0,
            "rss": usage.ru_maxrss * 1024}
base = run(["--version"], ".", os.devnull)["rss"]  # a child's peak counts the pages it shares with this one
results = {}
for name, (args, cwd) in cases.items():
    results[name] = {**run(args, cwd, os.path.join(outs, name + ".out")), "base": base}
print(json.dumps(results))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDSWEEP_", "MLFLOW_", "PG"))}
    # a UTF-8 locale as most users have: printing a lone surrogate (a non-UTF-8 byte) fails there
    return {**env, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}


def _forked(cases: dict[str, tuple[list[str], str]], outs: Path) -> dict[str, dict]:
    """Both parents at once (one core each where there are two), each forking its cases in turn."""
    procs = []
    for name, imports in (("light", LIGHT), ("heavy", HEAVY)):
        mine = {k: v for k, v in cases.items() if (v[0][:2] in TRAINING) == (name == "heavy")}
        (outs / f"{name}.json").write_text(json.dumps(mine))
        procs.append(subprocess.Popen([sys.executable, "-c", FORKS, str(outs / f"{name}.json"), str(outs),
                                       str(KILL_AFTER), ",".join(imports)], env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results.update(json.loads(out.strip().splitlines()[-1]))
    return results


def test_every_command_fails_short_and_cleanly_on_mutated_flags(tmp_path):
    cases, logs, before = {}, {}, {}
    outs = tmp_path / "outputs"
    outs.mkdir()
    for n in range(CASES):
        args, spec, log = make_cli_case(n)
        folder = tmp_path / f"case{n}"
        _case_folder(folder, spec)
        cases[str(n)], logs[str(n)], before[str(n)] = (args, str(folder)), log, listing(folder)
    results = _forked(cases, outs)
    slow = {k: cases[k] for k, r in results.items() if MAX_SECONDS < r["seconds"] < KILL_AFTER}
    if slow:  # once more: a slow input is slow every time; a busy machine (2 cores, shared) is not
        for k, r in _forked(slow, outs).items():
            results[k]["seconds"] = min(results[k]["seconds"], r["seconds"])
    failures, codes = [], {}
    for n, r in results.items():
        args, folder = cases[n]
        output = (outs / f"{n}.out").read_text("utf-8", "replace")
        codes[r["code"]] = codes.get(r["code"], 0) + 1
        found = problems_of(r["code"], output, r["seconds"], r["rss"] - r["base"], max_seconds=MAX_SECONDS)
        if PASSWORD in output:
            found.append("a password is printed")
        made = sorted(set(listing(Path(folder))) - set(before[n]))
        if made:
            found.append(f"created {made[:5]}")
        if r["code"] == 0 and args[:2] in TRAINING and not output.startswith("Usage:"):
            found.append("trained (the fuzz must stop before training)")
        if found:
            failures.append(f"case {n} ({' '.join(logs[n])}): kdsweep {' '.join(map(repr, args))}: "
                            f"{'; '.join(found)}\n    {output[-400:]!r}")
    by_command: dict[str, list[float]] = {}
    for n, r in results.items():
        by_command.setdefault(" ".join(cases[n][0][:2]), []).append(r["seconds"])
    print({k: (len(v), round(sum(v) / len(v), 3), round(max(v), 2)) for k, v in sorted(by_command.items())})
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:12])
    # a fuzz that never passed, or never failed, would be testing little
    assert codes.get(0, 0) > CASES // 20 and codes.get(2, 0) > CASES // 2, codes
    print(f"\n{CASES} cases: exit codes {codes}, slowest {max(r['seconds'] for r in results.values()):.2f} s, "
          f"largest peak {max(r['rss'] - r['base'] for r in results.values()) / 2**20:.0f} MB")


REAL = {  # name: (argv as bytes, as a shell passes them, the exit code expected)
    "validate a non-UTF-8 spec name": ([b"study", b"validate", b"\xff\xfe.yaml"], 2),
    "validate a FIFO": ([b"study", b"validate", b"fifo"], 2),
    "duplicate key": ([b"study", b"validate", b"dup.yaml", b"--data-root", b"."], 2),
    "report from MLflow's file store": ([b"report", b"fuzz", b"--tracking-uri", b"file:///tmp/\xff"], 2),
    "run on a mysql store": ([b"study", b"validate", b"spec.yaml", b"--data-root", b".", b"--storage",
                              f"mysql://u:{PASSWORD}@127.0.0.1:1/\xff".encode("latin-1")], 2),
    "set a non-UTF-8 value": ([b"study", b"validate", b"spec.yaml", b"--data-root", b".", b"--set",
                               b"student.recipe.lr=\xff"], 2),
}


def test_real_processes_with_non_utf8_arguments(tmp_path):
    procs = {}
    for i, (name, (argv, _)) in enumerate(REAL.items()):
        folder = tmp_path / f"real{i}"
        _case_folder(folder, yaml.safe_dump(GOOD).encode())
        procs[name] = (folder, listing(folder), subprocess.Popen(
            [sys.executable.encode(), b"-m", b"kdsweep", *argv], cwd=folder, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    failures = []
    for name, (folder, before, proc) in procs.items():
        out, _ = proc.communicate(timeout=120)
        text = out.decode("utf-8", "replace")
        lines = text.strip().splitlines()
        if proc.returncode != REAL[name][1] or len(lines) != 1 or not lines[0].startswith("Error: "):
            failures.append(f"{name}: exit {proc.returncode}, {text[-600:]!r}")
        if PASSWORD.encode() in out or listing(folder) != before:
            failures.append(f"{name}: a password printed or a file created: {text[-300:]!r}")
    assert not failures, "\n".join(failures)
