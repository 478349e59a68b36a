# Every target sets up .venv from scratch when it is missing, so both commands work on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU wheel of torch 2.13.0 is what this machine and CI install; on a GPU machine pass a CUDA build here.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test bench bench-compare gpu-check run clean

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

# Every run is also saved (pytest-benchmark's autosave, in .benchmarks/), so that bench-compare can show a regression.
bench: install
	mkdir -p .bench
	$(PY) -m pytest benchmarks --benchmark-autosave --benchmark-json=.bench/bench.json
	$(PY) -m rnnlm.report .bench/bench.json --out .bench/report

# The last two saved runs of `make bench`, side by side per benchmark (median, IQR, rounds, operations per second).
bench-compare: install
	@runs="$$(ls -1t .benchmarks/*/*.json 2>/dev/null | head -n 2)"; \
	if [ "$$(printf '%s\n' "$$runs" | grep -c .)" -lt 2 ]; then \
		echo "make bench-compare: needs two saved runs of make bench in .benchmarks/" >&2; exit 2; fi; \
	$(VENV)/bin/pytest-benchmark compare --group-by=fullname --sort=fullname \
		--columns=median,iqr,ops,rounds $$runs

# The kernels on a GPU in one command: kernel tests on CUDA, recurrence / softmax / sampling / cross-entropy / model
# timings against cuDNN and torch, report.md + JSON + plots in GPU_CHECK_OUT (benchmarks/gpu_check.py). It installs
# nothing and needs only what a CUDA image ships (PYTHONPATH=.; the venv's python when there is one). Without a GPU
# it runs the same pipeline in Triton's interpreter at small shapes, marked as interpreter figures.
GPU_CHECK_OUT ?= .bench/gpu-check
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_OUT)

# Trains the default model on the default corpus for about 8 minutes (replacing the last such run), then prints
# test perplexity and a sample.
run: install
	$(PY) -m rnnlm.train --time-budget 8 --out runs/default --overwrite

clean:
	rm -rf $(VENV) .bench runs .pytest_cache
