"""PyTorch models (``data/model.pth`` pickled, or ``data/model.pt2`` from torch.export), when torch is installed.

MLmodel keys used: python_function ``data`` and ``config.device``; predicts under ``torch.no_grad``
on a float32 matrix, as MLflow does.
"""

from __future__ import annotations

import numpy as np

from engine.errors import ModelLoadError, require

from . import Predictor, note_code_runs


class PytorchFlavor:
    name = "pytorch"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        torch = require("torch", "pytorch", "a PyTorch model")
        pyfunc = meta.flavors.get("python_function", {})
        data = meta.path / (pyfunc.get("data") or conf.get("model_data") or "data")
        device = (pyfunc.get("config") or {}).get("device") or "cpu"
        if (data / "model.pt2").is_file():
            model = torch.export.load(str(data / "model.pt2")).module()
        elif (data / "model.pth").is_file():
            note_code_runs(data / "model.pth", "torch pickle")
            model = torch.load(str(data / "model.pth"), map_location=device, weights_only=False)
            model.eval()
        else:
            raise ModelLoadError(f"no model.pth or model.pt2 under {str(data)!r}; re-log the model")
        model.to(device)

        def predict(x, params):
            with torch.no_grad():
                out = model(torch.from_numpy(x).to(device))
            return out.cpu().numpy() if hasattr(out, "cpu") else out

        return Predictor(predict=predict, input_kind="matrix", dtype=np.dtype("float32"), native=model)


FLAVOR = PytorchFlavor()
