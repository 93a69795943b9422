"""Following a registry alias without downtime: check ``models:/name@alias`` every ``reload_every_s``;
a new version is loaded in the background, must score a sample built from its signature, and only
then replaces the model answering (one reference swap: a batch runs wholly on the old or the new
model). Any failure keeps the old model and is logged. A version that downloads but fails to load or
score is counted as refused and not tried again until the alias names another (loading a broken model
every check costs CPU and memory while serving); a registry or download failure is tried again."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pyarrow as pa

from ..errors import EngineError

__all__ = ["follow", "sample"]

log = logging.getLogger("arrowscore.serve")


def _zeros(kind: pa.DataType, rows: int) -> pa.Array:
    if pa.types.is_fixed_size_list(kind):
        return pa.FixedSizeListArray.from_arrays(_zeros(kind.value_type, rows * kind.list_size), kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.array([[0]] * rows, pa.list_(pa.int64())).cast(kind) if pa.types.is_integer(kind.value_type) \
            or pa.types.is_floating(kind.value_type) else pa.array([[]] * rows, kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.array([""] * rows, kind)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.array([b""] * rows, kind)
    if pa.types.is_boolean(kind):
        return pa.array([False] * rows, kind)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pa.array(np.zeros(rows, dtype="int64")).cast(pa.int64()).cast(kind)
    return pa.array(np.zeros(rows)).cast(kind)


def sample(model, rows: int = 2) -> pa.RecordBatch | None:
    """Rows of zeros (empty strings, False) in the model's input signature; None without a signature."""
    schema = model.input_schema
    if schema is None:
        return None
    return pa.RecordBatch.from_arrays([_zeros(f.type, rows) for f in schema], names=schema.names)


def _load(path, version: str, options):
    """(model, seconds) for a downloaded version that loads and scores a sample; else an error."""
    from ..model import load_model

    started = time.perf_counter()
    model = load_model(path, flavor=options.flavor, model_config=options.model_config, cache_dir=options.cache_dir,
                       shared_cpu=True, small_batches=True)
    probe = sample(model)
    if probe is not None:
        out = model.score_batch(probe)
        if out.num_rows != probe.num_rows:
            raise EngineError(f"version {version} gave {out.num_rows} rows for {probe.num_rows}")
    return model, time.perf_counter() - started


async def follow(entry, options, metrics) -> None:
    from ..model import uris

    loop = asyncio.get_running_loop()
    refused = None  # a version that failed its check is not loaded again (each check) until the alias moves
    while True:
        await asyncio.sleep(options.reload_every_s)
        try:
            found = await loop.run_in_executor(None, uris.registry_version, entry.uri)
        except Exception as exc:  # noqa: BLE001 - the registry cannot be reached: ask again next time
            log.warning("model %s: cannot look %s up in the registry; still serving version %s (%s: %s)",
                        entry.name, entry.uri, entry.version, type(exc).__name__, exc)
            continue
        version = None if found is None else str(found.version)
        if version is None or version in (str(entry.version), refused):
            continue
        try:
            path = await loop.run_in_executor(None, uris.resolve, f"models:/{found.name}/{version}", options.cache_dir)
        except Exception as exc:  # noqa: BLE001 - a download that failed may work next time
            log.warning("model %s: cannot download version %s of %s; still serving version %s (%s: %s)",
                        entry.name, version, entry.uri, entry.version, type(exc).__name__, exc)
            metrics.reloads.labels(entry.name, "unavailable").inc()
            continue
        try:
            model, seconds = await loop.run_in_executor(None, _load, path, version, options)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
            refused = version
            log.error("model %s: version %s of %s did not load or score a sample; still serving version %s, and "
                      "version %s is not tried again until the alias moves (%s: %s)", entry.name, version, entry.uri,
                      entry.version, version, type(exc).__name__, exc)
            metrics.reloads.labels(entry.name, "refused").inc()
            continue
        refused = None
        previous = metrics.labels_of(entry.name)
        old = entry.version
        entry.model, entry.version, entry.load_seconds = model, version, seconds  # the swap
        metrics.loaded(entry, previous)
        metrics.reloads.labels(entry.name, "swapped").inc()
        log.info("model %s: %s now answers with version %s (was %s)", entry.name, entry.uri, version, old)
