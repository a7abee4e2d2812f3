"""One Optuna trial: sample values, train a distilled student per seed, compare with baselines.

The trial's value is the mean over seeds of the final-epoch test accuracy (``objective:
test_acc``) or of its gain over the matched baseline (``objective: delta_vs_baseline``); the
spread over seeds is stored beside it, so a gain can be read against the noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna

from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.data import ImageSet
from kdsweep.core.teachers import TeacherSource
from kdsweep.core.trainer import train
from kdsweep.study import space
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.recorder import Recorder, RunInfo
from kdsweep.study.spec import StudySpec
from kdsweep.study.teacher import Trained, obtain, weights_payload


class Objective:
    def __init__(self, spec: StudySpec, data: ImageSet, teacher_source: TeacherSource, teacher: Trained, *,
                 recorder: Recorder, workdir: Path, device: str, locks: Locks = ProcessLocks()) -> None:
        self.spec, self.data, self.source, self.teacher = spec, data, teacher_source, teacher
        self.recorder, self.workdir, self.device, self.locks = recorder, workdir, device, locks
        self._baselines: dict[tuple[float, int], Trained] = {}

    def baseline(self, width: float, seed: int) -> Trained:
        """The no-KD student of this width and seed, trained once per study (and reused after)."""
        if (width, seed) not in self._baselines:
            cfg = space.baseline_config(self.spec, width=width, seed=seed, device=self.device)
            self._baselines[(width, seed)] = obtain("baseline", cfg, self.data, recorder=self.recorder,
                                                    workdir=self.workdir, tags={"study": self.spec.name},
                                                    locks=self.locks)
        return self._baselines[(width, seed)]

    def __call__(self, trial: optuna.Trial) -> float:
        values = space.sample(trial, self.spec)
        scores, deltas = [], []
        for i, seed in enumerate(self.spec.seeds):
            base = self.baseline(values["width"], seed)
            acc = self._train_one(trial, values, seed, base, report=(i == 0))
            scores.append(acc)
            deltas.append(acc - base.test_acc)
        for name, xs in (("test_acc", scores), ("delta_vs_baseline", deltas)):
            trial.set_user_attr(f"{name}_mean", statistics.fmean(xs))
            trial.set_user_attr(f"{name}_std", statistics.stdev(xs) if len(xs) > 1 else 0.0)
        trial.set_user_attr("seeds", list(self.spec.seeds))
        return statistics.fmean(deltas if self.spec.objective == "delta_vs_baseline" else scores)

    def _train_one(self, trial: optuna.Trial, values: dict[str, float], seed: int, base: Trained,
                   *, report: bool) -> float:
        cfg = space.student_config(self.spec, values, seed=seed, device=self.device)
        key = cfg.fingerprint(data_identity=self.data.identity)
        params = {**cfg.as_params(), "trial": trial.number, "data_identity": self.data.identity,
                  "baseline_run_id": base.run_id, "teacher_run_id": self.teacher.run_id}
        tags = {"study": self.spec.name, "trial": str(trial.number), "seed": str(seed)}
        attr = f"mlflow_run_id_seed{seed}"
        run_id = self.recorder.start(RunInfo("distilled", key, params, tags, run_id=trial.user_attrs.get(attr)))
        trial.set_user_attr(attr, run_id)

        def on_epoch(m) -> None:
            self.recorder.log_epoch(run_id, m)
            if report:
                trial.report(m.score, m.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {m.epoch} (test_acc {m.score:.4f})")

        try:
            result = train(cfg, self.data, teacher=self.source, on_epoch=on_epoch,
                           checkpoint_path=self.workdir / "progress" / f"distilled-{key}.pt")
        except optuna.TrialPruned as exc:
            self.recorder.fail(run_id, str(exc), killed=True)
            raise
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:500])
            self.recorder.fail(run_id, reason, killed=isinstance(exc, KeyboardInterrupt))
            raise
        summary = result.summary()
        summary["delta_vs_baseline"] = summary["final_test_acc"] - base.test_acc
        summary["delta_vs_teacher"] = summary["final_test_acc"] - self.teacher.test_acc
        final = save_checkpoint(weights_payload(cfg, self.data.num_classes, result.scored_model),
                                self.workdir / "models" / f"distilled-{key}.pt")
        self.recorder.finish(run_id, summary, final)
        return summary["final_test_acc"]
