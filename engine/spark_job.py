"""The spark-submit entry point: ``arrowscore score ... --runner spark`` as a script Spark can run, or
``arrowscore run`` for a job file whose runner is spark.

    spark-submit --master 'local[2]' "$(python -m engine.spark_job --path)" MODEL_URI INPUT OUTPUT [score options]
    spark-submit --master 'local[2]' "$(python -m engine.spark_job --path)" run JOB.yaml --once
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--path"]:
        print(__file__)
        return 0
    from engine.cli import main as cli_main  # absolute: spark-submit runs this file as a script

    if args[:1] == ["run"]:  # a scheduled job: its job file names the runner (spark uses this session)
        return cli_main(args)
    return cli_main(["score", *args, "--runner", "spark"])


if __name__ == "__main__":
    raise SystemExit(main())
