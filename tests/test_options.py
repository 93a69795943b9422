"""engine.jobs.options: what the option dataclasses accept, and how they refuse the rest."""

from __future__ import annotations

import pytest

from engine import ConfigError
from engine.jobs.options import ScoreOptions, StreamOptions

STREAM = {"bootstrap_servers": "localhost:9092", "input_topic": "in", "output_topic": "out", "group_id": "g"}


def test_one_string_is_one_column_name():
    assert ScoreOptions(keep_columns="id").keep_columns == ("id",)  # not ('i', 'd')
    assert ScoreOptions(feature_columns="x").feature_columns == ("x",)
    assert StreamOptions(keep_columns="id", **STREAM).keep_columns == ("id",)
    assert ScoreOptions(keep_columns=["id", "ts"]).keep_columns == ("id", "ts")


@pytest.mark.parametrize("value", [5, ["id", 5], [["id"]], b"id"])
def test_column_names_that_are_not_strings_are_refused(value):
    with pytest.raises(ConfigError, match=r"keep_columns takes a column name or a list of them, got "):
        ScoreOptions(keep_columns=value)
    with pytest.raises(ConfigError, match=r"keep_columns takes a column name or a list of them, got "):
        StreamOptions(keep_columns=value, **STREAM)


def test_params_must_be_a_mapping():
    assert ScoreOptions(params={"k": 1}).params == {"k": 1}
    with pytest.raises(ConfigError, match=r"params must be a mapping of name to value, got str '\{bad'; "
                                          r"decode JSON with json.loads first"):
        ScoreOptions(params="{bad")
    with pytest.raises(ConfigError, match=r"params must be a mapping .*got list"):
        ScoreOptions(params=[1])


def test_dead_letter_path_without_dead_letter_mode_is_refused():
    with pytest.raises(ConfigError, match=r"dead_letter 'd.parquet' is given but on_error is 'fail'.*"
                                          r"on_error='dead-letter' \(--on-error dead-letter\)"):
        ScoreOptions(dead_letter="d.parquet")
    assert ScoreOptions(on_error="dead-letter", dead_letter="d.parquet").dead_letter == "d.parquet"
