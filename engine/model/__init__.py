"""The model core: a logged model in, one hot path out (``Model.score_batch``).

Imports only ``engine.errors`` and ``flavors``; nothing here knows about files of data, jobs or modes.
- ``mlmodel``, ``signature``, ``params``, ``requirements``: MLflow's model format, read and checked;
- ``uris``: model URIs (paths, runs:/, models:/) resolved and cached;
- ``convert``: every Arrow <-> numpy rule; ``inputs`` / ``outputs``: batch <-> model input / output plans;
- ``scorer``: ``Model`` and ``load_model``; ``save``: ``save_model``; ``payload``: MLflow's request formats.
"""

from .save import save_model
from .scorer import Model, load_model
from .signature import Signature

__all__ = ["Model", "load_model", "save_model", "Signature"]
