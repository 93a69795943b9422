# Two commands for a new user: `make demo` (set up + score a sample) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# the demo needs only these extras: the demo model is scikit-learn, and its next commands include serve
DEMO_EXTRAS := sklearn,serve
DEMO_STAMP  := $(VENV)/.demo-installed

.PHONY: setup demo test bench clean

# $(1): the extras to install (editable), pinned by constraints.txt
define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(PY) --quiet -c constraints.txt -e '.[$(1)]'
endef

# dev holds every extra, so a test setup is a demo setup too: both stamps
$(STAMP): pyproject.toml constraints.txt
	$(call install,dev)
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml constraints.txt
	$(call install,$(DEMO_EXTRAS))
	touch $(DEMO_STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

# the Spark suite again on pyspark 3.5 (the long-term line of many platforms): arrow_udf and toArrow
# are missing there, so the fallbacks run; everything else as constraints.txt pins it
SPARK35 := .venv-spark35
SPARK35_STAMP := $(SPARK35)/.installed

$(SPARK35_STAMP): pyproject.toml constraints.txt $(STAMP)
	test -x $(SPARK35)/bin/python || $(UV) venv --quiet --python $(PY) $(SPARK35)
	grep -v -E '^(pyspark|pandas|py4j)==' constraints.txt > $(SPARK35)/constraints.txt
	$(UV) pip install --python $(SPARK35)/bin/python --quiet -c $(SPARK35)/constraints.txt \
		-e '.[sklearn,onnx,xgboost,lightgbm,mlflow,pandas,serve,run]' mlflow skl2onnx pytest pytest-timeout \
		hypothesis 'pyspark==3.5.7' 'pandas<2.3'   # 3.5.7: the newest 3.5 whose Kafka connector Maven Central serves
	touch $(SPARK35_STAMP)

test: $(STAMP) $(SPARK35_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(SPARK35)/bin/python -m pytest -q -p no:cacheprovider tests/test_spark.py -k 'not connect'

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_parquet.py
	$(PY) benchmarks/bench_spark.py
	$(PY) benchmarks/bench_ray.py
	$(PY) benchmarks/bench_stream.py --spark
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_run.py
	$(PY) benchmarks/bench_deploy.py
	$(PY) benchmarks/bench_gpu.py   # on the CPU where torch sees no GPU: what arrowscore adds there

clean:
	rm -rf $(VENV) $(SPARK35) demo .pytest_cache
