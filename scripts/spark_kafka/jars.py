"""Fetch Spark's Kafka connector jars (scripts/spark_kafka/pom.xml) into .cache/spark-kafka/libs.

    python scripts/spark_kafka/jars.py        # prints the comma-separated jar list for spark.jars / --jars

Only the connector and what pyspark lacks are copied; Spark's own jars come with pyspark.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBS = HERE.parents[1] / ".cache" / "spark-kafka" / "libs"
ARTIFACTS = "spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2"


def jars() -> list[str]:
    if not any(LIBS.glob("spark-sql-kafka-0-10_2.13-*.jar")):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed to fetch Spark's Kafka connector from Maven Central")
        LIBS.mkdir(parents=True, exist_ok=True)
        subprocess.run([mvn, "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
                        "-DincludeScope=runtime", f"-DincludeArtifactIds={ARTIFACTS}", f"-DoutputDirectory={LIBS}"],
                       check=True, timeout=900, stdout=subprocess.DEVNULL)
    return sorted(str(p) for p in LIBS.glob("*.jar"))


if __name__ == "__main__":
    print(",".join(jars()))
    sys.exit(0)
