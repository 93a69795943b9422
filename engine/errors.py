"""The one exception tree of arrowscore.

    EngineError                      base: catch this to catch everything arrowscore raises
     +-- ConfigError                 bad options or arguments (unknown params, wrong URI form, ...)
     +-- ModelLoadError              a model directory or URI cannot be turned into a scorer
     |    +-- FlavorNotFound         no flavor in the MLmodel file is one arrowscore can load
     |    +-- MissingDependency      the flavor needs a package that is not installed
     +-- SchemaError                 input does not fit the model signature (names the columns)
     |    +-- SchemaMismatch         the batch's columns or types do not fit: every row fails alike
     +-- ScoringError                the user's model raised while predicting (carries the cause)
     +-- ConnectorError              a source or sink failed (files, Kafka, ...)
          +-- TransactionAborted     a Kafka transaction had to be aborted (the group moved on under it);
                                     the stream consumes its batch again and goes on

Every message says what happened, the values involved, and what to do.
No HTTP status codes here: servers map these types to statuses themselves.
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "ConfigError",
    "ModelLoadError",
    "FlavorNotFound",
    "MissingDependency",
    "SchemaError",
    "SchemaMismatch",
    "ScoringError",
    "ConnectorError",
    "TransactionAborted",
    "require",
]


class EngineError(Exception):
    """Base of every error arrowscore raises on purpose."""


class ConfigError(EngineError, ValueError):
    """An option, argument or URI is not valid."""


class ModelLoadError(EngineError):
    """A model directory or URI cannot be loaded."""


class FlavorNotFound(ModelLoadError):
    """None of the model's flavors is one arrowscore can load."""


class MissingDependency(ModelLoadError, ImportError):
    """A package the model needs is not installed; the message names the extra."""


class SchemaError(EngineError, ValueError):
    """Input data does not fit the model's signature."""


class SchemaMismatch(SchemaError):
    """The batch's columns or their types do not fit the signature, whatever its values: every row of
    it fails alike (dead-letter isolation rejects the batch whole instead of bisecting it)."""


class ScoringError(EngineError):
    """The model itself raised while predicting; ``__cause__`` holds the original error."""


class ConnectorError(EngineError):
    """A source or sink failed."""


class TransactionAborted(ConnectorError):
    """A Kafka transaction was aborted on an abortable error (say the consumer group rebalanced under it,
    so a newer member owns its partitions): nothing of it is visible; its batch is consumed again."""


def require(module: str, extra: str, why: str):
    """Import ``module`` or raise MissingDependency naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{why} needs the Python package '{module.split('.')[0]}', which is not installed "
            f"({exc}); pip install 'arrowscore[{extra}]'"
        ) from exc
