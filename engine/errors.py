"""The one exception tree of arrowscore.

    EngineError                      base: catch this to catch everything arrowscore raises
     +-- ConfigError                 bad options or arguments (unknown params, wrong URI form, ...)
     +-- ModelLoadError              a model directory or URI cannot be turned into a scorer
     |    +-- FlavorNotFound         no flavor in the MLmodel file is one arrowscore can load
     |    +-- MissingDependency      the flavor needs a package that is not installed
     |    +-- ModelUnavailable       the model's store or tracking server did not answer (also an UnavailableError)
     +-- SchemaError                 input does not fit the model signature (names the columns)
     |    +-- SchemaMismatch         the batch's columns or types do not fit: every row fails alike
     +-- ScoringError                the user's model raised while predicting (carries the cause)
     +-- ConnectorError              a source or sink failed (files, Kafka, ...)
          +-- TransactionAborted     a Kafka transaction had to be aborted (the group moved on under it);
          |                          the stream consumes its batch again and goes on
          +-- UnavailableError       infrastructure did not answer: Kafka brokers, a Ray cluster, a Spark
                                     master, an object store; nothing is wrong with the command, so a
                                     retry later may work (the CLI exits 3)

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
    "UnavailableError",
    "ModelUnavailable",
    "unreachable",
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


class UnavailableError(ConnectorError):
    """Something arrowscore connects to (brokers, a cluster, a store) did not answer; worth a retry."""


class ModelUnavailable(ModelLoadError, UnavailableError):
    """The store or tracking server holding a model did not answer while it was being downloaded."""


# what the network clients under arrowscore call a host that did not answer: urllib3/requests, botocore,
# and the AWS/GCS SDKs inside pyarrow (curl 6: host not resolved, 7: no connection, 28: timed out)
_UNREACHABLE_TYPES = ("NewConnectionError", "MaxRetryError", "ConnectTimeout", "ConnectTimeoutError",
                      "EndpointConnectionError", "ConnectionClosedError")
_UNREACHABLE_TEXT = ("NETWORK_CONNECTION", "curlCode: 6,", "curlCode: 7,", "curlCode: 28,",
                     "Failed to establish a new connection", "Could not connect to the endpoint URL")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` or one of its causes says a host did not answer (network down, nothing listening,
    a timeout), as opposed to a refusal (credentials, a missing path, bad data)."""
    import socket

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BrokenPipeError):  # our reader went away (| head), not a host
            return False
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror, UnavailableError)) \
                or type(exc).__name__ in _UNREACHABLE_TYPES or any(t in str(exc) for t in _UNREACHABLE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
