"""Spark: an Arrow UDF for any logged model, and whole-DataFrame scoring through mapInArrow.

    predict = engine.spark.udf(spark, "models:/fraud@champion")
    df.withColumn("score", predict("amount", "age"))
    engine.spark.score(df, "models:/fraud@champion", keep_columns=["id"])

The public name of ``engine.runners.spark_udf``, where the code lives.
"""

from .runners.spark_udf import score, spark_schema, udf

__all__ = ["udf", "score", "spark_schema"]
