"""``kdsweep study validate`` imports no torch: names and params come from torch-free declarations.

A fresh process validates every shipped spec (and a bad one) with an import hook that notes the
stack of whoever imports torch first, so a failure names the module to fix (see the docstrings
of ``kdsweep/core/methods/base.py`` and ``kdsweep/core/registry.py`` for the rule).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(str(p) for p in (ROOT / "studies").glob("*.yaml"))
HEAVY = ("torch", "torchvision", "timm", "optuna", "mlflow")  # seconds and hundreds of MB each to import

PROBE = """
import json, sys, traceback
first = {}
class Watch:  # notes who imports a heavy package first; imports it as usual
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HEAVY and top not in first:
            first[top] = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()
                          if "kdsweep" in f.filename and "importlib" not in f.filename][-4:]
        return None
HEAVY = tuple(json.loads(sys.argv[1]))
sys.meta_path.insert(0, Watch())
from kdsweep.cli import main
codes = []
for args in json.loads(sys.argv[2]):
    try:
        main(args, prog_name="kdsweep")
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "imported": first}))
"""


def _validate(tmp_path: Path, runs: list[list[str]]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(runs)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validating_every_shipped_spec_imports_no_torch(tmp_path):
    assert len(SPECS) >= 5, SPECS
    result = _validate(tmp_path, [["study", "validate", spec, "--data-root", "."] for spec in SPECS])
    # the specs are valid, so every check ran (models, data sets, methods and their params, stores)
    assert result["codes"] == [0] * len(SPECS), result
    assert result["imported"] == {}, f"imported by validate (the last kdsweep frames): {result['imported']}"


def test_a_bad_spec_is_refused_without_torch_too(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nteacher: {arch: resnet9}\nstudent: {arch: resnet8, method: dkd, dkd: {beta: -1}}\n"
                    "search: {method: {choices: [kd, nope]}}\ndata: {dataset: cifar11}\n")
    result = _validate(tmp_path, [["study", "validate", str(spec), "--data-root", "."]])
    assert result["codes"] == [2], result
    assert result["imported"] == {}, f"imported by validate (the last kdsweep frames): {result['imported']}"
