"""Where a model runs: the ``--device`` flag and ``model_config["device"]``, spelled as MLflow spells them.

Checked here without importing torch or onnxruntime, so a bad flag fails before any model loads.

>>> check_device("cuda:1"), is_gpu("cuda:1"), gpu_index("cuda:1"), is_gpu("cpu"), is_gpu(None)
('cuda:1', True, 1, False, False)
>>> with_device({"k": 3}, "cuda")
{'k': 3, 'device': 'cuda'}
>>> for_driver({"device": "cuda:1"}), for_driver({"k": 3})
({'device': 'cpu'}, {'k': 3})
>>> check_device("gpu")
Traceback (most recent call last):
...
engine.errors.ConfigError: device 'gpu' is not one of cpu, cuda, cuda:N (N: the GPU's index)...
"""

from __future__ import annotations

import re

from engine.errors import ConfigError

__all__ = ["GPU_BATCH_ROWS", "check_device", "gpu_index", "is_gpu", "with_device", "device_of", "for_driver"]

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")

# rows per batch when a GPU scores: a kernel launch and a host-device copy cost tens of microseconds
# each, so GPU batches are eight times the CPU default (32,768) unless batch_rows says otherwise
GPU_BATCH_ROWS = 262_144


def check_device(value) -> str | None:
    """``value`` if it names a device arrowscore can place a model on (None: the model's own choice)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _DEVICE.fullmatch(text):
        raise ConfigError(f"device {value!r} is not one of cpu, cuda, cuda:N (N: the GPU's index); "
                          "pass --device cpu to score on the CPU")
    return text


def is_gpu(device) -> bool:
    return device is not None and str(device).startswith("cuda")


def gpu_index(device) -> int:
    """The GPU's index in ``cuda:N`` (0 for plain ``cuda``)."""
    _, _, index = str(device).partition(":")
    return int(index) if index else 0


def with_device(model_config: dict | None, device: str | None) -> dict | None:
    """``model_config`` with ``device`` set, as MLflow's ``load_model(..., model_config={"device": ...})``."""
    if device is None:
        return model_config
    return {**(model_config or {}), "device": device}


def device_of(model_config: dict | None) -> str | None:
    """The device a model_config asks for, checked (None when it names none)."""
    return check_device((model_config or {}).get("device"))


def for_driver(model_config: dict | None) -> dict | None:
    """model_config for a cluster job's driver, which loads the model only to plan the job (schemas,
    columns): a GPU device becomes the CPU, so a driver without a GPU can plan a GPU job."""
    return with_device(model_config, "cpu") if is_gpu(device_of(model_config)) else model_config
