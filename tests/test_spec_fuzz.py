"""Fuzz ``kdsweep study validate`` with random mutations of every shipped spec (``studies/*.yaml``).

Each case must exit 0 or 2, print no traceback and at most 10 kB (no line over 1,000 characters),
and take under 2 s and 500 MB. The bulk runs in-process through click's CliRunner (a fresh
process spends ~4 s and ~600 MB importing torch alone on the CI machine); the nastiest cases also
run as real processes. The generator is seeded (KDSWEEP_FUZZ_SEED): a failure names its case
number and keeps its file. The default, 1,000 cases (100 per spec), keeps this file under a
minute; KDSWEEP_FUZZ_CASES=10000 gives each spec 1,000.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdsweep.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "studies").glob("*.yaml"))
CASES = int(os.environ.get("KDSWEEP_FUZZ_CASES", "1000"))  # in all, spread evenly over the specs
SEED = int(os.environ.get("KDSWEEP_FUZZ_SEED", "14"))
MAX_OUTPUT, MAX_LINE, MAX_SECONDS, MAX_BYTES = 10_000, 1_000, 2.0, 500 * 2**20

PASSWORD = "hunter2-secret"
EXTREMES = [0, -1, 1, 2**31, 2**63 - 1, -(2**63) + 1, 2**63, 10**30, -(10**30), 1e308, -1e308, 5e-324, 1e-310,
            float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1 - 1e-16]
SCALARS = [None, True, False, "", " ", "0", "true", "null", "~", "kd", "resnet8", "cpu", "cuda:99",
           "sqlite:///x.db", f"postgresql://kdsweep:{PASSWORD}@127.0.0.1:1/db", f"http://u:{PASSWORD}@h:5000",
           "../" * 300, "a" * 300, "\x00", "\u202e", "é" * 50, b"\xff\xfe", "2024-13-45", "!!python/object"]
# raw YAML text dropped in place of a value: things a dumper never writes
RAW = ["2024-13-45", "2024-02-30 25:61:00", "0x" + "f" * 40, "1" * 5000, "-" + "9" * 30, "1:2:3:4:5", "0b" + "1" * 80,
       "0o777777777777777777777777", "1e400", "-.inf", ".NaN", "!!binary zz==", "!!binary " + "QUJD" * 300,
       "!!python/object/apply:os.system ['echo owned']", "!!python/name:os.system", "!!set {a, b}", "!!omap [a: 1, b]",
       "!!float abc", "!!int 1.5", "!!timestamp yesterday", "!!str", "!<tag:yaml.org,2002:map> [1]", "!local x",
       "*undefined", "&a [*a]", "&b {x: *b}", "{<<: *undefined}", "[1, 2", "{a: 1", "'unclosed", "\"\\ud800\"",
       "\"\\x00\\x07\"", "\"\\U0010ffff\"", "\"" + "\\" + "q\"", "|\n  x\n y", ">-", "? [1, 2]\n: 3",
       "{? [1, 2]: 3}", "{? {a: 1}: 3}", "[" * 80 + "]" * 80, "{a: " * 80 + "1" + "}" * 80, "[" * 5000,
       "- " * 60 + "x", "%YAML 1.1", "--- a\n--- b", "...", "@x", "`x`", "\tx", "x\t: y", "&" + "a" * 1000 + " 1"]
# the same on one line, as a --set value
FLOW_LAUGHS = ("[&a [" + ",".join(["lol"] * 9) + "], "
               + ", ".join(f"&{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh")) + "]")
PUNCT = list(":-[]{},&*!|>'\"%@`#?\t\n ") + ["\x00", "\x07", "\x85", "\ufeff", "\ud7ff", "  ", ": ", "- "]


def laughs(levels: int, width: int = 9) -> list:
    """The billion-laughs shape: each level lists the one below ``width`` times (dumped as aliases)."""
    node: list = ["lol"] * width
    for _ in range(levels):
        node = [node] * width
    return node


def nested(depth: int, kind: str) -> object:
    node: object = 1
    for _ in range(depth):
        node = [node] if kind == "list" else {"k": node}
    return node


def locations(tree: object) -> list[tuple[object, object]]:
    """(container, key) of every node under ``tree``; a container met twice (shared, or a cycle) is walked once."""
    out, seen, todo = [], set(), [tree]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items)[:50]:
            out.append((node, k))
            if isinstance(v, (dict, list)):
                todo.append(v)
    return out


def mutate_tree(rng: random.Random, tree: dict, log: list[str]) -> None:
    where = locations(tree)
    parent, key = rng.choice(where)
    kind = rng.choice(["swap", "swap", "drop", "rename", "extreme", "extreme", "deep", "laughs", "cycle", "huge",
                       "list", "share", "mapping"])
    log.append(f"{kind}@{str(key)[:30]}")
    if kind == "swap":
        parent[key] = rng.choice(SCALARS + EXTREMES + [[], {}, [1, "a"], {"low": 1}, {"choices": []}])
    elif kind == "drop":
        parent.pop(key)
    elif kind == "rename" and isinstance(parent, dict):
        new = rng.choice([f"{key}x", str(key).upper(), "", " ", "x" * 5000, 0, -1, None, True, 1.5, f"{key}.{key}",
                          "search", "method", "__class__", "ﬁ"])
        parent[new] = parent.pop(key)
    elif kind == "extreme":
        parent[key] = rng.choice(EXTREMES)
    elif kind == "deep":
        parent[key] = nested(rng.choice([5, 30, 45, 49, 52, 90]), rng.choice(["list", "dict"]))
    elif kind == "laughs":
        parent[key] = laughs(rng.randint(1, 8), rng.choice([2, 9, 30]))
    elif kind == "cycle":
        loop: list = [1]
        loop.append(loop)
        parent[key] = loop
    elif kind == "huge":
        # mostly small enough to keep the run short; the last is over the reader's limit
        n = rng.choice([250, 2_000, 20_000] if rng.random() < 0.9 else [100_000, 250_000, 300_000])
        base = rng.choice(["x", str(parent[key]), f"postgresql://u:{PASSWORD}@h/", "é", "\\"])
        parent[key] = (base * (n // max(1, len(base)) + 1))[:n]
    elif kind == "list":  # many distinct items: seeds, choices, keys
        n = rng.choice([101, 300, 1_000] if rng.random() < 0.9 else [4_900, 20_000])
        parent[key] = (list(range(n)) if rng.random() < 0.5 else [i / 7 for i in range(n)]) if rng.random() < 0.7 \
            else {f"k{i}": i for i in range(n)}
    elif kind == "share":  # the same subtree in two places: dumped as &anchor and *alias
        other_parent, other_key = rng.choice(where)
        parent[key] = other_parent[other_key] if other_parent is not parent else parent[key]
    elif kind == "mapping":  # a mapping where a value was, or the reverse
        parent[key] = {"low": parent[key], "high": parent[key]} if rng.random() < 0.5 else [parent[key]]


def mutate_text(rng: random.Random, text: str, log: list[str]) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    kind = rng.choice(["dup", "dup", "delete", "truncate", "punct", "raw", "raw", "raw", "indent", "merge"])
    log.append(f"text:{kind}@{i}")
    if kind == "dup":  # duplicate keys (a dict cannot hold them, so only text can)
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif kind == "delete":
        del lines[i]
    elif kind == "truncate":
        return text[: rng.randrange(len(text) + 1)]
    elif kind == "punct":
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + rng.choice(PUNCT) + text[pos:]
    elif kind == "raw":
        raw = rng.choice(RAW)
        head, sep, _ = lines[i].partition(": ")
        if sep and "\n" not in raw:
            lines[i] = f"{head}: {raw}\n"
        else:
            lines.insert(i, f"{'x' * rng.randint(1, 3)}: {raw}\n" if rng.random() < 0.5 else raw + "\n")
    elif kind == "indent":
        lines[i] = rng.choice(["\t", "  ", " ", ""]) + lines[i].lstrip()
    elif kind == "merge":
        lines.insert(i, "<<: " + rng.choice(["*nope", "{name: x}", "[1]", "&m {seeds: [0]}"]) + "\n")
    return "".join(lines)


def mutate_bytes(rng: random.Random, data: bytes, log: list[str]) -> bytes:
    kind = rng.choice(["high", "flip", "utf16", "latin1", "bom", "nul"])
    log.append(f"bytes:{kind}")
    pos = rng.randrange(len(data) + 1)
    if kind == "high":
        return data[:pos] + bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 4))) + data[pos:]
    if kind == "flip" and data:
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
    if kind == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if kind == "latin1":
        return data[:pos] + "£ é ñ".encode("latin-1") + data[pos:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    return data[:pos] + b"\x00" + data[pos:]


DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's, where built: the cases are made faster


@functools.cache
def _parsed(source: Path) -> dict:
    return yaml.safe_load(source.read_text())


def make_case(n: int) -> tuple[Path, bytes, list[str], list[str]]:
    """Case ``n``: (the spec it came from, the file's bytes, extra CLI args, what was done)."""
    rng = random.Random(SEED * 1_000_003 + n)
    source = SPECS[n % len(SPECS)]
    tree = copy.deepcopy(_parsed(source))
    log: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.05:  # the whole document swapped for something else
            tree = rng.choice([[tree], None, 0, "name", laughs(6), nested(60, "dict")])
            log.append("document")
            break
        mutate_tree(rng, tree, log)
    try:
        text = yaml.dump(tree, Dumper=DUMPER, sort_keys=False, allow_unicode=rng.random() < 0.5, width=10**6)
    except (yaml.YAMLError, RecursionError):
        text, log = yaml.safe_dump({"name": "dumper-refused"}), [*log, "undumpable"]
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        text = mutate_text(rng, text, log)
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        data = mutate_bytes(rng, data, log)
    args = [] if rng.random() < 0.1 else ["--data-root", "."]  # otherwise the spec's (mutated) root is checked
    if rng.random() < 0.1:
        keys = ["student.recipe.lr", "search.lr", "teacher", "seeds", "data.root.x", "a.b.c"]
        args += ["--set", f"{rng.choice(keys)}={rng.choice(RAW + [FLOW_LAUGHS, json.dumps(laughs(2))])}"]
        log.append("--set")
    return source, data, args, log


def problems_of(code: int, output: str, seconds: float, peak: int, *, max_seconds: float = MAX_SECONDS) -> list[str]:
    out = []
    if code not in (0, 2):
        out.append(f"exit {code}")
    if "Traceback" in output:
        out.append("traceback")
    size = len(output.encode("utf-8", "surrogateescape"))
    if size > MAX_OUTPUT:
        out.append(f"{size:,} bytes of output")
    long = max((len(line) for line in output.splitlines()), default=0)
    if long > MAX_LINE:
        out.append(f"a line of {long:,} characters")
    if seconds > max_seconds:
        out.append(f"{seconds:.2f} s")
    if peak > MAX_BYTES:
        out.append(f"{peak / 2**20:.0f} MB")
    return out


def test_shipped_specs_are_there():
    assert len(SPECS) >= 10, SPECS  # every one is fuzzed below; an empty glob would make the fuzz vacuous


def _peak_rss() -> int | None:
    """This process's peak resident memory (VmHWM) in bytes, None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> bool:
    """Start a new peak from the memory in use now (Linux: clear_refs 5), so one case's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _meter_works() -> bool:
    """The per-case peak sees 64 MB touched after a reset (it would miss a blow-up otherwise)."""
    before = _peak_rss()
    if before is None:
        return False
    block = bytearray(64 * 2**20)  # zero pages: touched below, so resident
    block[::4096] = b"\1" * len(block[::4096])
    grown = _peak_rss() - before
    del block
    _reset_peak_rss()
    return grown >= 60 * 2**20


def test_mutated_specs_fail_short_and_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDSWEEP_DATA_ROOT", raising=False)
    runner = CliRunner()
    case_file = tmp_path / "case.yaml"
    runner.invoke(main, ["study", "validate", str(SPECS[0]), "--data-root", "."])  # imports, outside the timing
    per_case = _reset_peak_rss() and _meter_works()  # else only the growth over the whole run
    rss0 = _peak_rss() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    failures, codes, slowest, largest = [], {0: 0, 2: 0}, 0.0, 0
    for n in range(CASES):
        source, data, args, log = make_case(n)
        case_file.write_bytes(data)
        if per_case:
            _reset_peak_rss()
            before = _peak_rss()
        t0 = time.perf_counter()
        result = runner.invoke(main, ["study", "validate", str(case_file), *args])
        seconds = time.perf_counter() - t0
        peak = _peak_rss() - before if per_case else 0
        for _ in range(2):  # a slow input is slow every time; a busy machine (2 cores, shared) is not
            if seconds <= MAX_SECONDS:
                break
            t0 = time.perf_counter()
            runner.invoke(main, ["study", "validate", str(case_file), *args])
            seconds = min(seconds, time.perf_counter() - t0)
        slowest, largest = max(slowest, seconds), max(largest, peak)
        codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
        found = problems_of(result.exit_code, result.output, seconds, peak)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            found.append(f"raised {type(result.exception).__name__}: {str(result.exception)[:200]}")
        if found:
            (tmp_path / f"failed-{n}.yaml").write_bytes(data)
            failures.append(f"case {n} ({source.name}, {' '.join(log)}, args {args}): {'; '.join(found)}"
                            f"\n    {result.output[:300]!r}")
    growth = (_peak_rss() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - rss0
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:15])
    assert growth < MAX_BYTES, f"the process grew {growth / 2**20:.0f} MB over the fuzz"
    # validate creates nothing (no mlruns/, no database), whatever the input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.yaml"]
    # a fuzz whose mutations never passed validation, or never failed it, would be testing little
    assert codes[0] > CASES // 50 and codes[2] > CASES // 2, codes
    print(f"\n{CASES} cases: exit codes {codes}, slowest {slowest:.3f} s, largest peak "
          f"{largest / 2**20:.0f} MB{'' if per_case else ' (not measured per case here)'}")


# the 400-byte file: printed 1.16 GB and used 6.9 GB before aliases were bounded
BILLION_LAUGHS = (b"name: lol\nteacher: {arch: resnet8}\nstudent:\n  arch: resnet8\n  a: &a [" + b",".join([b"lol"] * 9)
                  + b"]\n" + b"".join(b"  %c: &%c [%s]\n" % (c, c, b",".join([b"*%c" % p] * 9))
                                      for p, c in zip(b"abcdefg", b"bcdefgh")))
# The nastiest inputs, each validated by a real process: forked from one that has done the imports
# (a fresh process spends ~4 s and ~600 MB on torch alone here), so each child's exit status,
# output through its own file descriptors, time and peak memory are those of the input.
GOOD_HEAD = b"name: x\nteacher: {arch: resnet8}\nstudent: {arch: resnet8}\n"
NASTY = {  # name: (file, extra args)
    "billion laughs": (BILLION_LAUGHS, []),
    "200 kB password URL": (GOOD_HEAD + b"storage: postgresql://u:" + PASSWORD.encode() + b"@h/" + b"d" * 200_000
                            + b"\n", []),
    "100,000 brackets": (b"name: x\nteacher: " + b"[" * 100_000 + b"\n", []),
    "2,000 unknown keys": (GOOD_HEAD + b"".join(b"key%d: %s\n" % (i, b"v" * 20) for i in range(2_000)), []),
    "a cycle": (GOOD_HEAD + b"search: &s {lr: *s}\n", []),
    "4,000 seeds": (GOOD_HEAD + b"seeds: [" + b",".join(b"%d" % i for i in range(4_000)) + b"]\n", []),
    "5,000 digits": (GOOD_HEAD + b"n_trials: " + b"7" * 5_000 + b"\n", []),
    "non-UTF-8": (b"name: x\nteacher: {arch: resnet8}\nstudent: {arch: \xff\xfe\x80}\n", []),
    "--set laughs": (GOOD_HEAD, ["--set", f"student.recipe.lr={FLOW_LAUGHS}"]),
}
FORKS = """
import json, os, resource, sys, time, traceback
import kdsweep.cli, kdsweep.study.spec, kdsweep.core.models, kdsweep.core.data  # imported once, before the forks
cases, results = json.loads(sys.argv[1]), {}
def run(args, out):
    pid = os.fork()
    if pid == 0:  # the child: `kdsweep ARGS` with its stdout and stderr going to `out`
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1), os.dup2(fd, 2)
        try:
            kdsweep.cli.main(args, prog_name="kdsweep")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    t0 = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - t0,
            "rss": usage.ru_maxrss * 1024}
base = run(["--version"], os.devnull)["rss"]  # a child's peak counts the pages it shares with this process
for name, args in cases.items():
    results[name] = {**run(args, name + ".out"), "base": base}
print(json.dumps(results))
"""


def _forked(cases: dict[str, list[str]], cwd: Path, env: dict[str, str]) -> dict[str, dict]:
    forks = subprocess.run([sys.executable, "-c", FORKS, json.dumps(cases)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=300)
    assert forks.returncode == 0, forks.stderr[-2000:]
    return json.loads(forks.stdout)


def test_nastiest_inputs_in_real_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KDSWEEP_DATA_ROOT", None)
    cases = {}
    for i, (name, (data, args)) in enumerate(NASTY.items()):
        (tmp_path / f"{i}.yaml").write_bytes(data)
        cases[str(i)] = ["study", "validate", f"{i}.yaml", "--data-root", ".", *args]
    # and the issue's own reproduction as a fresh `python -m kdsweep`, beside the forks
    fresh = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "validate", "0.yaml", "--data-root", "."],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = _forked(cases, tmp_path, env)
    slow = {k: cases[k] for k, r in results.items() if r["seconds"] > MAX_SECONDS}
    if slow:  # once more: a slow input is slow every time; a busy machine (2 cores, shared) is not
        for k, r in _forked(slow, tmp_path, env).items():
            results[k]["seconds"] = min(results[k]["seconds"], r["seconds"])
    failures = []
    for i, name in enumerate(NASTY):
        r = results[str(i)]
        output = (tmp_path / f"{i}.out").read_text("utf-8", "replace")
        found = problems_of(r["code"], output, r["seconds"], r["rss"] - r["base"])
        if r["code"] != 2 or len([line for line in output.splitlines() if line.startswith("Error: ")]) != 1:
            found.append(f"exit {r['code']}, not 2 with one Error: line")
        if PASSWORD in output:
            found.append("the password is printed")
        if found:
            failures.append(f"{name}: {'; '.join(found)}\n    {output[:300]!r}")
    out, _ = fresh.communicate(timeout=300)
    if fresh.returncode != 2 or len(out) > MAX_OUTPUT or len(out.splitlines()) != 1:
        failures.append(f"fresh process on the billion laughs: exit {fresh.returncode}, {len(out):,} bytes")
    assert not failures, "\n".join(failures)
    print("\n" + "\n".join(f"{name}: exit {results[str(i)]['code']}, {results[str(i)]['seconds']:.3f} s, "
                            f"{(results[str(i)]['rss'] - results[str(i)]['base']) / 2**20:.0f} MB"
                            for i, name in enumerate(NASTY)))
    # validate created nothing beside the cases and their outputs
    assert sorted(p.suffix for p in tmp_path.iterdir()) == sorted([".yaml", ".out"] * len(NASTY))


def test_alias_bomb_is_refused_naming_file_and_reason(tmp_path):
    spec = tmp_path / "bomb.yaml"
    spec.write_bytes(BILLION_LAUGHS)
    result = CliRunner().invoke(main, ["study", "validate", str(spec), "--data-root", "."])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {spec}: not valid YAML at line 8, column 16: more than 3,000 values, each alias counted as a copy "
        "(a study spec has a few hundred)"]


@pytest.mark.parametrize("text, expected", [
    (FLOW_LAUGHS, "not valid YAML at line 1, column 120: more than 3,000 values, each alias counted as a copy"),
    ("&a [*a]", "not valid YAML at line 1, column 5: alias *a is inside the node it names"),
    ("[" * 60 + "]" * 60, "not valid YAML at line 1, column 51: nested deeper than 50 levels"),
    ("1" * 5000, "integer 1111111111111111111111111111111111111111... is out of range"),
    ("2024-13-45", "2024-13-45 is not a date: month must be in 1..12"),
])
def test_set_values_are_bounded_too(tmp_path, text, expected):
    from kdsweep.errors import SpecError
    from kdsweep.study.spec import parse_set

    with pytest.raises(SpecError) as err:
        parse_set([f"student.recipe.lr={text}"])
    (line,) = err.value.problems
    assert expected in line and len(line) < 400, line


def test_a_long_value_is_cut_and_its_password_masked(tmp_path):
    spec = tmp_path / "spec.yaml"
    url = f"postgres://kdsweep:{PASSWORD}@127.0.0.1:5432/{'d' * 5000}"  # postgres: a scheme SQLAlchemy dropped
    spec.write_text(yaml.safe_dump({"name": "x", "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                                    "storage": url, "tracking_uri": f"ftp://u:{PASSWORD}@h/"}))
    result = CliRunner().invoke(main, ["study", "validate", str(spec), "--data-root", "."])
    assert result.exit_code == 2 and PASSWORD not in result.output, result.output
    lines = dict(line.removeprefix("Error: ").split("=", 1) for line in result.stderr.strip().splitlines())
    assert lines[f"{spec}: storage"].startswith("'postgres://kdsweep:***@127.0.0.1:5432/ddd")
    assert "... (5," in lines[f"{spec}: storage"] and len(lines[f"{spec}: storage"]) < 400
    assert lines[f"{spec}: tracking_uri"].startswith("'ftp://u:***@h/': MLflow tracking URI must start with")


def test_many_problems_are_counted_past_twenty(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                                    **{f"extra{i}": i for i in range(50)}}))
    result = CliRunner().invoke(main, ["study", "validate", str(spec), "--data-root", "."])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 21, lines
    assert lines[-1] == f"{spec}: ... and 30 more problems"


def test_a_spec_over_256_kb_is_refused_unread(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: " + b"x" * 300_000)
    result = CliRunner().invoke(main, ["study", "validate", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {spec}: spec is over 256 kB (a study spec is a few kB)"

