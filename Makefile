# `make demo` and `make test` do all set-up themselves (a .venv in the repo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | md5sum | cut -c1-8)

.PHONY: demo demo-rtrl test bench bench-anakin clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[envs,test]"
	touch $(STAMP)

# R2AC-RTRL on MemoryChain(memory_length=10): progress bar, then a plot of
# return vs environment frames in runs/r2ac_rtrl_<time>/.
demo: $(STAMP)
	$(PY) -m experiments.r2ac_anakin

# The eLSTM demo: online RTRL vs TBPTT on a cue-recall stream.
demo-rtrl: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) -m experiments.benchmark_cells

bench-anakin: $(STAMP)
	$(PY) -m experiments.benchmark_anakin

clean:
	rm -rf $(VENV) runs
