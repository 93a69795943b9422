"""The output contract every runner keeps, as one check: three input files, keep_columns=["id"], nulls in
a required column, dead letters. Used by the local, Ray and Spark suites."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BAD_IDS = (2, 17, 30)  # rows of in-0, in-1 and in-2 whose f0 is null
BOUNDS = (0, 13, 26, 40)  # in-0: ids 0-12, in-1: 13-25, in-2: 26-39


def three_files(case, directory: Path) -> pa.Table:
    """The case's 40 rows with an id, in three files, f0 null in BAD_IDS."""
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    f0 = [None if i in BAD_IDS else v for i, v in enumerate(table.column("f0").to_pylist())]
    table = table.set_column(table.schema.get_field_index("f0"), "f0", pa.array(f0, pa.float64()))
    directory.mkdir(parents=True)
    for k, (a, b) in enumerate(zip(BOUNDS, BOUNDS[1:])):
        pq.write_table(table.slice(a, b - a), directory / f"in-{k}.parquet", row_group_size=5)
    return table


def check(report, out: Path, dead: Path, files_by_spark: bool = False) -> None:
    """What docs/batch.md promises every runner, checked on the files themselves."""
    parts = sorted(p for p in out.iterdir() if p.suffix == ".parquet")
    ids = [pq.read_table(p).column("id").to_pylist() for p in parts]
    good = [[i for i in range(a, b) if i not in BAD_IDS] for a, b in zip(BOUNDS, BOUNDS[1:])]
    if files_by_spark:  # one part per Spark task: any grouping of whole runs, each in input order
        assert sorted(i for part in ids for i in part) == [i for f in good for i in f]
        for part in ids:
            for run in good:
                mine = [i for i in part if i in run]
                assert mine == [i for i in run if i in mine], f"rows out of input order: {part}"
    else:  # one part file per input file, rows in input order
        assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        assert ids == good
    assert (out / "_SUCCESS").exists()
    rejected = pq.read_table(dead)
    assert rejected.column_names[-3:] == ["_error", "_source_file", "_source_row"]
    where = list(zip(rejected.column("id").to_pylist(), map(os.path.basename, rejected.column("_source_file").to_pylist()),
                     rejected.column("_source_row").to_pylist()))
    assert where == [(2, "in-0.parquet", 2), (17, "in-1.parquet", 4), (30, "in-2.parquet", 4)]
    assert all("hold nulls" in e for e in rejected.column("_error").to_pylist())
    assert report.rows == 40 and report.dead_lettered == 3 and report.input_files == 3
    assert report.rows_scored == sum(map(len, ids)) == 37


# with batch_rows=8: the first bad batch of whichever file failed first (every bad row is in rows 0-7 of its file)
FAIL_MESSAGE = r"in-\d\.parquet rows 0-7: columns \['f0'\] hold nulls"
