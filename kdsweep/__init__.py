"""kdsweep: knowledge-distillation sweeps with Optuna and MLflow."""

__version__ = "0.1.0"
