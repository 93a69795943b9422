"""MLflow model signatures (column specs, tensor specs, params) as Arrow types.

>>> sig = Signature.from_mlmodel({"inputs": '[{"type": "double", "name": "x"}]', "outputs": None})
>>> sig.input_schema()
x: double not null
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, ModelLoadError

__all__ = ["ColSpec", "TensorSpec", "ParamSpec", "Signature", "arrow_type", "mlflow_type"]

_SCALARS = {
    "boolean": pa.bool_(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "datetime": pa.timestamp("ns"),
}
_SCALAR_NAMES = {v: k for k, v in _SCALARS.items()}


def arrow_type(spec: Any) -> pa.DataType:
    """The Arrow type of one MLflow column type (a name, or an array/object/map dict)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    kind = spec.get("type")
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return pa.list_(arrow_type(spec["items"]))
    if kind == "object":
        fields = [
            pa.field(name, arrow_type(prop), nullable=not prop.get("required", True))
            for name, prop in spec["properties"].items()
        ]
        return pa.struct(fields)
    if kind == "map":
        return pa.map_(pa.string(), arrow_type(spec["values"]))
    if kind == "sparkml_vector":
        return pa.list_(pa.float64())
    if kind == "any":
        return pa.null()  # no enforcement: the column passes as it is
    raise ModelLoadError(f"unknown MLflow column type {kind!r} in the model signature: {spec}")


def mlflow_type(t: pa.DataType) -> dict:
    """The MLflow column type (as a JSON-able dict) for an Arrow type."""
    if t in _SCALAR_NAMES:
        return {"type": _SCALAR_NAMES[t]}
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return {"type": "string"}
    if pa.types.is_large_binary(t):
        return {"type": "binary"}
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return {"type": "datetime"}
    if pa.types.is_integer(t):
        return {"type": "long" if t.bit_width > 32 else "integer"}
    if pa.types.is_floating(t):
        return {"type": "double" if t.bit_width > 32 else "float"}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return {"type": "array", "items": mlflow_type(t.value_type)}
    if pa.types.is_struct(t):
        props = {}
        for f in t:
            props[f.name] = {**mlflow_type(f.type), "required": not f.nullable}
        return {"type": "object", "properties": props}
    if pa.types.is_map(t):
        return {"type": "map", "values": mlflow_type(t.item_type)}
    raise ModelLoadError(f"Arrow type {t} has no MLflow signature type; cast the column first")


@dataclass(frozen=True)
class ColSpec:
    name: str | None
    type: pa.DataType
    required: bool = True

    def field(self, default_name: str) -> pa.Field:
        return pa.field(self.name or default_name, self.type, nullable=not self.required)

    def to_dict(self) -> dict:
        d = {**mlflow_type(self.type), "required": self.required}
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class TensorSpec:
    name: str | None
    dtype: np.dtype
    shape: tuple  # -1 marks a variable dimension; shape[0] is the batch dimension

    @property
    def row_shape(self) -> tuple:
        return tuple(self.shape[1:])

    def arrow_type(self) -> pa.DataType:
        t = pa.from_numpy_dtype(self.dtype) if self.dtype.kind not in "OUS" else pa.string()
        for dim in reversed(self.row_shape):
            t = pa.list_(t, dim) if dim > 0 else pa.list_(t)
        return t

    def field(self, default_name: str) -> pa.Field:
        return pa.field(self.name or default_name, self.arrow_type(), nullable=False)

    def to_dict(self) -> dict:
        d = {"type": "tensor", "tensor-spec": {"dtype": self.dtype.name, "shape": list(self.shape)}}
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    default: Any
    shape: tuple | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "default": self.default,
                "shape": list(self.shape) if self.shape else None}


def _parse_spec(d: dict):
    if d.get("type") == "tensor":
        ts = d["tensor-spec"]
        return TensorSpec(d.get("name"), np.dtype(ts["dtype"]), tuple(ts["shape"]))
    return ColSpec(d.get("name"), arrow_type(d), bool(d.get("required", True)))


def _parse_schema(text) -> tuple | None:
    if not text:
        return None
    items = json.loads(text) if isinstance(text, str) else text
    specs = tuple(_parse_spec(d) for d in items)
    kinds = {type(s) for s in specs}
    if len(kinds) > 1:
        raise ModelLoadError("the signature mixes column and tensor specs; MLflow allows only one kind")
    return specs


def _parse_params(text) -> tuple | None:
    if not text:
        return None
    items = json.loads(text) if isinstance(text, str) else text
    return tuple(
        ParamSpec(d["name"], d.get("type") or d.get("dtype"), d.get("default"),
                  tuple(d["shape"]) if d.get("shape") else None)
        for d in items
    )


def _schema(specs, default_name: str) -> pa.Schema | None:
    if specs is None:
        return None
    if len(specs) == 1:
        return pa.schema([specs[0].field(default_name)])
    return pa.schema([s.field(f"{default_name}_{i}") for i, s in enumerate(specs)])


@dataclass(frozen=True)
class Signature:
    inputs: tuple | None = None
    outputs: tuple | None = None
    params: tuple | None = None

    @classmethod
    def from_mlmodel(cls, d: dict | None) -> "Signature":
        if not d:
            return cls()
        try:
            return cls(_parse_schema(d.get("inputs")), _parse_schema(d.get("outputs")),
                       _parse_params(d.get("params")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"the MLmodel signature cannot be read ({exc}): {d}") from exc

    def to_mlmodel(self) -> dict:
        def dump(specs):
            return json.dumps([s.to_dict() for s in specs]) if specs else None
        return {"inputs": dump(self.inputs), "outputs": dump(self.outputs), "params": dump(self.params)}

    @property
    def is_tensor(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], TensorSpec)

    def input_schema(self) -> pa.Schema | None:
        return _schema(self.inputs, "input")

    def output_schema(self) -> pa.Schema | None:
        return _schema(self.outputs, "prediction")

    @classmethod
    def infer(cls, inputs: pa.Schema | None, outputs: pa.Schema | None = None, optional=()) -> "Signature":
        """A column signature from Arrow schemas (used by ``engine.save_model``).

        Every input column is required unless named in ``optional``: pyarrow fields are nullable by
        default, so a field's nullability cannot say whether the caller meant the column to be optional.
        Output columns keep their fields' nullability.
        """
        optional = list(optional)
        names = inputs.names if inputs is not None else []
        unknown = [n for n in optional if n not in names]
        if unknown:
            raise ConfigError(f"optional names {unknown}, which the input schema lacks (it has {names}); "
                              "name input columns only")
        ins = None if inputs is None else tuple(ColSpec(f.name, f.type, f.name not in optional) for f in inputs)
        outs = None if outputs is None else tuple(ColSpec(f.name, f.type, not f.nullable) for f in outputs)
        return cls(ins, outs)
