"""Wall time and peak memory of `kdsweep study validate SPEC` in a fresh process (median of N runs).

    python benchmarks/validate_light.py [SPEC] [--runs 5] [--repo PATH]

``--repo`` measures another checkout (e.g. the main branch) the same way: its folder goes first on
PYTHONPATH. Prints one line per run and the median; also whether torch was imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(repo: Path, spec: Path, folder: str) -> tuple[float, int, bool]:
    code = ("import sys\nfrom kdsweep.cli import main\n"
            "try:\n    main(['study', 'validate', sys.argv[1], '--data-root', '.'], prog_name='kdsweep')\n"
            "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "print('torch' in sys.modules, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec)], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    torch = proc.stderr.read().strip().splitlines()[-1] == "True"
    if proc.returncode != 0:
        raise SystemExit(f"validate failed with exit {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024, torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=ROOT / "studies" / "cifar10-subset.yaml")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = [one_run(args.repo.resolve(), args.spec.resolve(), folder) for _ in range(args.runs)]
    for seconds, rss, torch in runs:
        print(f"{seconds:6.2f} s  {rss / 2**20:6.0f} MB peak  torch imported: {torch}")
    print(f"median: {statistics.median(r[0] for r in runs):.2f} s, "
          f"{statistics.median(r[1] for r in runs) / 2**20:.0f} MB peak ({args.repo.resolve()})")


if __name__ == "__main__":
    main()
