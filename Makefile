VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv train test test-all bench sample-data clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

sample-data: $(STAMP)
	$(PY) scripts/make_sample_data.py --out data/sample

train: sample-data
	$(PY) train.py experiment=edgetam_distill debug=quickstart

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# every benchmark under scripts/bench/ -> docs/benchmarks.md (BENCH_ARGS="--quick" or "--only teacher_cache ...")
bench: $(STAMP)
	$(PY) scripts/bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf outputs logs data/sample
