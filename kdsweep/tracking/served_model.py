"""The MLflow pyfunc of a kdsweep run's final weights (an MLflow "model from code").

MLflow copies this file into each logged model and runs it when the model is loaded
(``mlflow.pyfunc.load_model``): no pickled object, and the weights load with
``torch.load(weights_only=True)``. Input: uint8 images [N, 3, H, W] as the data set stores them;
the model normalises them with the training split's per-channel mean and std (``model_config``)
and returns float32 logits [N, classes].
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from kdsweep.core.checkpoint import load_checkpoint
        from kdsweep.core.models import build_model

        cfg = context.model_config
        payload = load_checkpoint(context.artifacts["weights"])
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
        self.model = build_model(cfg["arch"], num_classes=int(cfg["num_classes"]), width=float(cfg["width"]),
                                 arch_args=json.loads(cfg.get("arch_args") or "{}"))
        self.model.load_state_dict(state)
        self.model.eval()
        # (x / 255 - mean) / std, as the training loader computes it
        std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1) / std
        self.batch_size = int(cfg.get("batch_size", 256))
        self.input_size = int(cfg.get("input_size") or 0)  # data.image_size on CIFAR: resized as in training

    # an ndarray hint: MLflow infers no schema from it (the model's signature, uint8 [N, 3, H, W],
    # checks the input) and does not warn that the hint is missing
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(model_input))
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                batch = x[i:i + self.batch_size].float()
                if self.input_size and batch.shape[-1] != self.input_size:
                    batch = torch.nn.functional.interpolate(batch, size=(self.input_size, self.input_size),
                                                            mode="bilinear", antialias=self.input_size < batch.shape[-1])
                batch = batch * self.scale + self.shift
                out.append(self.model(batch).float())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


set_model(ImageClassifier())
