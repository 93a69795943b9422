"""Spark Structured Streaming over Kafka with an arrowscore UDF: JSON in, JSON out, keys kept.

    spark-submit --jars "$(python scripts/spark_kafka/jars.py)" examples/spark_kafka_stream.py \\
        MODEL_URI 127.0.0.1:9092 input-topic output-topic /tmp/checkpoint

Spark's Kafka source keeps offsets in the checkpoint; its Kafka sink is at-least-once. For
exactly-once into Kafka without Spark, use `arrowscore stream --guarantee exactly-once`.
"""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import engine
import engine.spark


def start(spark, model_uri: str, bootstrap: str, input_topic: str, output_topic: str, checkpoint: str,
          available_now: bool = False):
    model = engine.load_model(model_uri)
    schema = engine.spark.spark_schema(model.input_schema)  # the signature's columns, as Spark types
    predict = engine.spark.udf(spark, model_uri)
    rows = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", bootstrap)
            .option("subscribe", input_topic).option("startingOffsets", "earliest").load()
            .select("key", F.from_json(F.col("value").cast("string"), schema).alias("row")))
    scored = rows.select("key", predict(F.col("row")).alias("prediction"))
    out = scored.select("key", F.to_json(F.struct("prediction")).alias("value"))
    writer = (out.writeStream.format("kafka").option("kafka.bootstrap.servers", bootstrap)
              .option("topic", output_topic).option("checkpointLocation", checkpoint))
    if available_now:
        writer = writer.trigger(availableNow=True)
    return writer.start()


if __name__ == "__main__":
    session = SparkSession.builder.appName("arrowscore-kafka").getOrCreate()
    start(session, *sys.argv[1:6]).awaitTermination()
