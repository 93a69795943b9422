"""The safe casts the signature allows: lossless or a SchemaError that says what to do.

Ints widen, ints become floats when every value is exact (Arrow checks), float64 -> float32 only for
float32 *tensor* inputs (what ONNX models take, as MLflow does), never float -> int.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaError

__all__ = ["is_numeric", "cast_target", "cast", "cast_tensor"]

_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


def is_numeric(t: pa.DataType) -> bool:
    return any(check(t) for check in _NUMERIC)


def cast_target(actual: pa.DataType, wanted: pa.DataType, name: str, lossy_float: bool = False):
    """The type to cast a column to (None: use as is), or SchemaError when no safe cast exists."""
    if actual == wanted or pa.types.is_null(wanted):
        return None
    ok = False
    if pa.types.is_string(wanted):
        ok = pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    elif pa.types.is_binary(wanted):
        ok = pa.types.is_large_binary(actual) or pa.types.is_fixed_size_binary(actual) or pa.types.is_binary_view(actual)
    elif pa.types.is_timestamp(wanted):
        if pa.types.is_timestamp(actual) and actual.tz is not None:
            raise SchemaError(f"column {name!r} is {actual} with a time zone; the model's signature wants a naive "
                              "datetime: convert it to UTC and drop the zone first")
        ok = pa.types.is_timestamp(actual) or pa.types.is_date(actual)
    elif pa.types.is_integer(wanted):
        ok = pa.types.is_integer(actual) or pa.types.is_boolean(actual)
    elif pa.types.is_floating(wanted):
        ok = pa.types.is_integer(actual) or pa.types.is_boolean(actual) or pa.types.is_decimal(actual) or (
            pa.types.is_floating(actual) and (actual.bit_width <= wanted.bit_width or lossy_float))
    elif pa.types.is_nested(wanted):
        ok = pa.types.is_nested(actual)
    if ok:
        return wanted
    hint = ""
    if pa.types.is_integer(wanted) and pa.types.is_floating(actual):
        hint = " (an integer column with missing values reads as float: fill the NaNs, or declare the column double)"
    if pa.types.is_floating(wanted) and pa.types.is_floating(actual):
        hint = " (narrowing floats loses precision: cast the column yourself, or declare it double)"
    raise SchemaError(f"column {name!r} is {actual}, the model's signature wants {wanted}{hint}; "
                      "cast the column or fix the producer")


def cast(col: pa.Array, target: pa.DataType, name: str) -> pa.Array:
    try:
        return pc.cast(col, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"column {name!r} cannot become {target} without changing its values ({exc}); "
                          "fix those values or the column type") from None


def cast_tensor(arr: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if arr.dtype == dtype:
        return arr
    if arr.dtype.kind in "iub" and dtype.kind == "f" and arr.size:
        limit = 2 ** (np.finfo(dtype).nmant + 1)
        if arr.dtype.kind != "b" and np.abs(arr).max() > limit:
            raise SchemaError(f"input {name!r} holds integers above {limit}, which {dtype} cannot hold exactly; "
                              "scale them or log the model with a wider input type")
    elif arr.dtype.kind == "f" and dtype.kind in "iu":
        raise SchemaError(f"input {name!r} is {arr.dtype}, the model wants {dtype}; float -> integer is not a "
                          "safe cast: round the values yourself first")
    elif not (np.can_cast(arr.dtype, dtype, "same_kind") or arr.dtype.kind == "b"):
        raise SchemaError(f"input {name!r} is {arr.dtype}, the model wants {dtype}; cast the column first")
    return arr.astype(dtype)
