"""Reading and writing the MLmodel file of a model directory.

>>> import tempfile, engine, pyarrow as pa
>>> path = engine.save_model(tempfile.mkdtemp() + "/m", lambda df: df["x"], signature=pa.schema([("x", pa.float64())]))
>>> read_mlmodel(path).flavors["python_function"]["loader_module"]
'flavors.python_function'
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ModelLoadError
from .signature import Signature

__all__ = ["ModelMeta", "read_mlmodel", "write_mlmodel"]


@dataclass(frozen=True)
class ModelMeta:
    """What arrowscore needs from an MLmodel file; unknown keys stay in ``raw``."""

    path: Path
    flavors: dict
    signature: Signature
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def model_id(self) -> str | None:
        return self.raw.get("model_id") or self.raw.get("model_uuid")

    @property
    def is_signature_from_type_hint(self) -> bool:
        return bool(self.raw.get("is_signature_from_type_hint"))


def read_mlmodel(model_dir: str | os.PathLike) -> ModelMeta:
    """Parse ``<model_dir>/MLmodel``, tolerating unknown keys and old layouts."""
    path = Path(model_dir)
    mlmodel = path / "MLmodel"
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is not a directory; pass the folder that holds the MLmodel file")
    if not mlmodel.is_file():
        raise ModelLoadError(
            f"no MLmodel file in {str(path)!r}; this is not an MLflow model directory "
            "(log the model with MLflow or engine.save_model, or point at the folder that holds MLmodel)"
        )
    try:
        raw = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"the MLmodel file in {str(path)!r} is not valid YAML ({exc}); re-log the model") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"the MLmodel file in {str(path)!r} holds {type(raw).__name__}, not a mapping; re-log the model")
    flavors = raw.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise ModelLoadError(f"the MLmodel file in {str(path)!r} names no flavors; re-log the model")
    if (raw.get("metadata") or {}).get("mlflow.model.external") is True:
        raise ModelLoadError(f"{str(path)!r} is an external model (metadata only); it holds nothing to load")
    return ModelMeta(path, {k: (v or {}) for k, v in flavors.items()}, Signature.from_mlmodel(raw.get("signature")), raw)


def write_mlmodel(model_dir: str | os.PathLike, flavors: dict, signature: Signature | None = None, **extra) -> None:
    """Write an MLmodel file that both arrowscore and MLflow read."""
    doc = {
        "flavors": flavors,
        "utc_time_created": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" "),
        **extra,
    }
    if signature is not None and (signature.inputs or signature.outputs):
        doc["signature"] = signature.to_mlmodel()
        doc["is_signature_from_type_hint"] = False
        doc["type_hint_from_example"] = False
    Path(model_dir, "MLmodel").write_text(yaml.safe_dump(doc, default_flow_style=False))
