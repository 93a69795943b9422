"""arrowscore: score MLflow models fast, on Arrow batches, in every mode.

>>> import engine
>>> model = engine.load_model("models:/fraud@champion")   # doctest: +SKIP
>>> model.predict(df)                                      # doctest: +SKIP
"""

from .errors import (ConfigError, ConnectorError, EngineError, FlavorNotFound, MissingDependency,
                     ModelLoadError, SchemaError, ScoringError)
from .batch import ScoreOptions, ScoreReport, score
from .save import save_model
from .scorer import Model, load_model


def stream(model_uri, **options):
    """Score a Kafka topic into another until stopped; see engine.stream.StreamOptions."""
    from .stream import stream as _stream

    return _stream(model_uri, **options)
from .signature import Signature

__all__ = [
    "load_model", "Model", "save_model", "Signature", "score", "stream", "ScoreOptions", "ScoreReport",
    "EngineError", "ConfigError", "ModelLoadError", "FlavorNotFound", "MissingDependency",
    "SchemaError", "ScoringError", "ConnectorError",
]
__version__ = "0.1.0"
