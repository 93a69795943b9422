"""Parquet in and out, on local or remote filesystems (anything pyarrow.fs or fsspec opens).

- ``source``: ``list_files`` lists the input files (with sizes and mtimes); ``ParquetSource`` reads each
  (``Part``) a row group at a time;
- ``sink``: ``ParquetSink`` stages part files out of sight and commits them together, then ``_SUCCESS``;
- ``deadletter``: ``DeadLetterFile``, the rejected rows of a job, committed with it;
- ``files``: paths and filesystems.
"""

from .deadletter import DeadLetterFile
from .files import filesystem_for
from .sink import MODES, SUCCESS, ParquetSink
from .source import ParquetSource, Part, list_files

__all__ = ["ParquetSource", "ParquetSink", "DeadLetterFile", "Part", "list_files", "filesystem_for", "MODES", "SUCCESS"]
