"""kdsweep: knowledge-distillation sweeps with Optuna and MLflow."""

__version__ = "0.1.0"

__all__ = ["load_report", "run_study"]


def __getattr__(name: str):
    # the Python API (kdsweep/api.py), imported on first use: `import kdsweep` stays light (no torch, no mlflow)
    if name in __all__:
        from kdsweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdsweep' has no attribute {name!r}")
