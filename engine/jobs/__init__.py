"""What every job shares, whatever runs it: options and reports (``options``), the per-batch rules
(``scoring.JobScorer``: keep columns, renames, dead letters), the ends of a Parquet job (``parquet``)
and progress lines (``progress``). Imports the model core and the connectors, never a runner.
"""
