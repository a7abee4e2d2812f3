"""A run's final weights as an MLflow 3 LoggedModel: linked to its run, holding its final metrics.

The model is a pyfunc from code (``served_model.py``) around the run's checkpoint file, so it
loads with ``mlflow.pyfunc.load_model("models:/<model_id>")`` and the weights with
``weights_only``; ``search_logged_models`` finds a study's best student by its metrics, and the
UI's Models tab lists every teacher, baseline and student with its accuracy. Final metrics carry
the data split they were measured on (``cifar10-test``), as the Dataset column shows them.
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

SERVED = Path(__file__).with_name("served_model.py")
MODEL_TYPE = "kdsweep-image-classifier"
# which split a final metric was measured on (the others belong to no split)
METRIC_SPLITS = {"final_test_acc": "test", "final_test_acc_raw": "test", "final_test_acc_ema": "test",
                 "best_val_test_acc": "test", "delta_vs_baseline": "test", "delta_vs_teacher": "test",
                 "final_train_acc": "train", "final_val_acc": "validation", "selected_delta": "validation",
                 "best_val_acc": "validation"}
DIGEST_CHARS = 36  # MLflow's limit on a dataset digest
NOT_IN_MODEL_NAMES = re.compile(r"[/:.%\"']")  # MLflow refuses these in a LoggedModel's name
# The signature states the input, so MLflow's "no input example" warning says nothing here. It is
# filtered for good, not in a catch_warnings block: trials log models from several threads, and
# another thread's block ending mid-save restores the filters from before ours.
warnings.filterwarnings("ignore", message=".*An input example was not provided when logging the model",
                        category=UserWarning)


def model_name(run_name: str) -> str:
    """The run's name as a LoggedModel name: ``teacher-resnet8-x0.5-s0`` -> ``teacher-resnet8-x0_5-s0``."""
    return NOT_IN_MODEL_NAMES.sub("_", run_name)


def dataset_name(dataset: str, split: str) -> str:
    return f"{dataset}-{split}"


def split_of(data: dict[str, Any] | None, split: str) -> dict[str, Any] | None:
    return next((s for s in (data or {}).get("splits", []) if s["split"] == split), None)


def dataset_inputs(data: dict[str, Any] | None) -> list:
    """One MLflow input per split of the study's data (``describe_data``), tagged with its context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    contexts = {"train": "training", "validation": "validation", "test": "testing"}
    out = []
    for s in (data or {}).get("splits", []):
        profile = f'{{"num_rows": {int(s["rows"])}}}'
        ds = Dataset(name=dataset_name(s["dataset"], s["split"]), digest=s["digest"][:DIGEST_CHARS],
                     source_type="local", source=f'{{"uri": "{s["source"]}"}}', profile=profile)
        out.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", contexts.get(s["split"], s["split"]))]))
    return out


def final_metrics(summary: dict[str, float], data: dict[str, Any] | None, *, model_id: str | None, step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for key, value in summary.items():
        split = split_of(data, METRIC_SPLITS.get(key, ""))
        out.append(Metric(key, float(value), now, step, model_id=model_id,
                          dataset_name=dataset_name(split["dataset"], split["split"]) if split else None,
                          dataset_digest=split["digest"][:DIGEST_CHARS] if split else None))
    return out


def model_config(params: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    data = data or {}
    return {"arch": str(params["arch"]), "width": float(params.get("width", 1.0)),
            "arch_args": str(params.get("arch_args") or ""), "input_size": int(data.get("input_size") or 0),
            "num_classes": int(data["num_classes"]), "mean": list(data["mean"]), "std": list(data["std"])}


def log_final_model(client, *, experiment_id: str, run_id: str, name: str, role: str, params: dict[str, Any],
                    data: dict[str, Any] | None, summary: dict[str, float], checkpoint: Path) -> str:
    """Log ``checkpoint`` as run ``run_id``'s LoggedModel and its final ``summary`` metrics; the model id."""
    import mlflow.pyfunc
    import numpy as np
    import torch
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    import kdsweep

    config = model_config(params, data)
    size = int(data["image_size"])
    step = int(summary.get("final_epoch", 0))
    shown = {k: str(v) for k, v in params.items() if k in ("arch", "width", "seed", "trial", "temperature",
                                                            "alpha", "ema_decay", "lr", "epochs")}
    model = client.create_logged_model(experiment_id, name=model_name(name), source_run_id=run_id, params=shown,
                                       tags={"role": role}, model_type=MODEL_TYPE)
    try:
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, size, size))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config["num_classes"]))]))
        # stating the requirements skips MLflow's inference (a subprocess that loads the model again)
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                        f"kdsweep=={kdsweep.__version__}" if hasattr(kdsweep, "__version__") else "kdsweep"]
        with tempfile.TemporaryDirectory(prefix="kdsweep-model-") as tmp:
            local = Path(tmp) / "model"
            meta = Model(artifact_path=model.artifact_location, model_id=model.model_id, run_id=run_id)
            mlflow.pyfunc.save_model(str(local), python_model=str(SERVED), artifacts={"weights": str(checkpoint)},
                                     model_config=config, signature=signature, pip_requirements=requirements,
                                     mlflow_model=meta)
            client.log_model_artifacts(model.model_id, str(local))
        client.log_batch(run_id, metrics=final_metrics(summary, data, model_id=model.model_id, step=step))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model.model_id


def model_of_run(client, experiment_id: str, run_id: str):
    """The READY LoggedModel run ``run_id`` logged (its latest), or None."""
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=10)
    ready = [m for m in found if str(m.status).endswith("READY")]
    return max(ready, key=lambda m: m.creation_timestamp) if ready else None
