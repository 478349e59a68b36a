# Every target sets up .venv from scratch when it is missing, so both commands work on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU wheel of torch 2.13.0 is what this machine and CI install; on a GPU machine pass a CUDA build here.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test bench run clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Unit, parity and end-to-end tests, then the benchmark suite in its quick CPU form.
test: install
	$(PY) -m pytest -q tests
	mkdir -p .bench
	$(PY) -m pytest -q benchmarks --benchmark-json=.bench/bench.json

bench: install
	mkdir -p .bench
	$(PY) -m pytest benchmarks --benchmark-json=.bench/bench.json
	$(PY) -m rnnlm.report .bench/bench.json --out .bench/report

# Trains the default model on the default corpus for about 8 minutes, then prints test perplexity and a sample.
run: install
	$(PY) -m rnnlm.train --time-budget 8 --out runs/default

clean:
	rm -rf $(VENV) .bench runs .pytest_cache
