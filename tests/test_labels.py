"""study/labels.py and `kdsweep teacher labels`: a study's stored soft labels, written once and shared."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from conftest import write_spec
from kdsweep.cli import main
from kdsweep.core.models import build_model
from kdsweep.core.soft_labels import LabelStore, StoredLabels
from kdsweep.study import tables
from kdsweep.study.runner import load_data
from kdsweep.study.spec import load_spec

LABELS = {"crops": 2, "top_k": 3, "scale": [0.35, 1.0]}
TEACHER = {"arch": "cnn_student", "width": 0.5, "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05},
           "stored_labels": LABELS}


def test_a_study_writes_its_store_once_and_every_trial_reads_it(tmp_path, subset_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", subset_root, teacher=TEACHER))
    data = load_data(spec)
    net = build_model("cnn_student", num_classes=data.num_classes, width=0.5)
    source = tables.teacher_source(spec, data, net, device="cpu", workdir=tmp_path)
    assert isinstance(source, StoredLabels) and source.store.complete
    assert source.store.meta["crops"] == 2 and source.store.meta["top_k"] == 3
    files = {p.name: p.stat().st_mtime_ns for p in source.store.folder.iterdir()}
    again = tables.teacher_source(spec, data, net, device="cpu", workdir=tmp_path)  # the next trial or worker
    assert again.store.folder == source.store.folder
    assert {p.name: p.stat().st_mtime_ns for p in again.store.folder.iterdir()} == files  # read, not rewritten
    other = build_model("cnn_student", num_classes=data.num_classes, width=0.5)  # another teacher: its own store
    assert tables.teacher_source(spec, data, other, device="cpu", workdir=tmp_path).store.folder != source.store.folder


def test_stored_labels_with_a_method_that_needs_every_logit_is_one_line(tmp_path, subset_root):
    raw = yaml.safe_load(write_spec(tmp_path / "s.yaml", subset_root, teacher=TEACHER).read_text())
    raw["search"]["method"] = {"choices": ["kd", "dkd"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["study", "run", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2, result.output
    assert "method 'dkd' reads every teacher logit" in result.output and len(result.output.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing created


def test_teacher_labels_command_writes_the_store_and_reuses_it(tmp_path, subset_root, monkeypatch):
    spec = write_spec(tmp_path / "s.yaml", subset_root, teacher=TEACHER, n_trials=1)
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(main, ["teacher", "labels", str(spec)])
    assert first.exit_code == 0, first.output
    folder = tmp_path / first.output.split("store: ")[1].split()[0]
    store = LabelStore(folder)
    assert store.complete and store.meta["crops"] == 2
    assert f"{store.meta['images']} images x 2 crops, top 3 of 10 classes" in first.output
    second = CliRunner().invoke(main, ["teacher", "labels", str(spec)])
    assert second.exit_code == 0 and "reused" in second.output, second.output
