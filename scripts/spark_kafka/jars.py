"""Fetch Spark's Kafka connector jars (scripts/spark_kafka/pom.xml) for the installed pyspark into
.cache/spark-kafka/<spark version>/libs (Scala 2.12 builds for Spark 3, 2.13 for Spark 4).

    python scripts/spark_kafka/jars.py        # prints the comma-separated jar list for spark.jars / --jars

Only the connector and what pyspark lacks are copied; Spark's own jars come with pyspark.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE.parents[1] / ".cache" / "spark-kafka"


def jars() -> list[str]:
    import pyspark

    version = pyspark.__version__
    scala = "2.12" if version.startswith(("2.", "3.")) else "2.13"
    libs = CACHE / version / "libs"
    artifacts = f"spark-sql-kafka-0-10_{scala},spark-token-provider-kafka-0-10_{scala},kafka-clients,commons-pool2"
    if not any(libs.glob(f"spark-sql-kafka-0-10_{scala}-*.jar")):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed to fetch Spark's Kafka connector from Maven Central")
        libs.mkdir(parents=True, exist_ok=True)
        subprocess.run([mvn, "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
                        f"-Dspark.version={version}", f"-Dscala.binary={scala}", "-DincludeScope=runtime",
                        f"-DincludeArtifactIds={artifacts}", f"-DoutputDirectory={libs}"],
                       check=True, timeout=900, stdout=subprocess.DEVNULL)
    return sorted(str(p) for p in libs.glob("*.jar"))


if __name__ == "__main__":
    print(",".join(jars()))
    sys.exit(0)
