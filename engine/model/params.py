"""Inference params: defaults from the signature's params schema, safe conversions, clear errors."""

from __future__ import annotations

import datetime as _dt

from ..errors import ConfigError

__all__ = ["ParamsPlan"]

_INTS = ("integer", "long")
_FLOATS = ("float", "double")


def _convert(value, kind: str, name: str):
    if kind in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"param {name!r} must be an integer ({kind}), got {value!r}")
        return value
    if kind in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"param {name!r} must be a number ({kind}), got {value!r}")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ConfigError(f"param {name!r} must be true or false, got {value!r}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise ConfigError(f"param {name!r} must be a string, got {value!r}")
        return value
    if kind == "datetime":
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"param {name!r} must be an ISO date or datetime, got {value!r}") from None
        return value
    return value  # binary, object and other kinds pass as given


class ParamsPlan:
    """Resolves the params of one predict call against the model's params schema."""

    def __init__(self, specs):
        self.specs = {s.name: s for s in (specs or ())}
        self.defaults = {s.name: s.default for s in (specs or ())}

    def resolve(self, params: dict | None) -> dict | None:
        if not params:
            return dict(self.defaults) if self.defaults else None
        if not self.specs:
            raise ConfigError(f"the model takes no params (its signature has no params schema), got {sorted(params)}; "
                              "drop them or log the model with a params schema")
        unknown = sorted(set(params) - set(self.specs))
        if unknown:
            raise ConfigError(f"unknown params {unknown}; the model takes {sorted(self.specs)}")
        out = dict(self.defaults)
        for name, value in params.items():
            spec = self.specs[name]
            if spec.shape:
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"param {name!r} must be a list of {spec.type}, got {value!r}")
                out[name] = [_convert(v, spec.type, name) for v in value]
            else:
                out[name] = _convert(value, spec.type, name)
        return out
