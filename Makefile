# Two commands for a new user: `make demo` (set up + score a sample) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(PY) --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_parquet.py
	$(PY) benchmarks/bench_spark.py
	$(PY) benchmarks/bench_ray.py
	$(PY) benchmarks/bench_stream.py --spark
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_run.py
	$(PY) benchmarks/bench_deploy.py

clean:
	rm -rf $(VENV) demo .pytest_cache
