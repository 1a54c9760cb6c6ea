# `make demo` and `make test` do all set-up themselves (a .venv in the repo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt | md5sum | cut -c1-8)

.PHONY: demo demo-rtrl test bench bench-anakin bench-sebulba study study-quick system-deps clean

# envpool's Procgen needs the Qt5 runtime (Debian: libqt5gui5). Installed when
# this runs as root with apt-get; otherwise the Procgen test skips and says
# what to install.
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q libQt5Gui.so.5; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -qq --no-install-recommends libqt5gui5 >/dev/null \
	    || echo "warning: apt-get install libqt5gui5 failed; Procgen tests will skip"; \
	else echo "note: libqt5gui5 absent and not root; Procgen tests will skip"; fi

# setup.py has version ranges; constraints.txt the exact versions installed
# here, so these commands install the same set everywhere.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[envs,tb,test]"
	touch $(STAMP)

# RTRL(10) vs TBPTT(10) on MemoryChain(30), 3 seeds each: both learning
# curves in one plot, runs/r2ac_demo_<time>/demo.png (about 2 minutes).
demo: $(STAMP)
	$(PY) -m experiments.r2ac_demo

# The eLSTM demo: online RTRL vs TBPTT on a cue-recall stream.
demo-rtrl: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30 tests

bench: $(STAMP)
	$(PY) -m experiments.benchmark_cells

bench-anakin: $(STAMP)
	$(PY) -m experiments.benchmark_anakin --hidden=64,256,512 --encoder_features=32,32,256 --in_loop_pass

# docs/SEBULBA.md's tables (about 15 minutes on 2 cores).
SEBULBA_TIME = --seconds=6 --rounds=3
SEBULBA_SMALL = --config.unroll_length=20 --config.network.hidden_size=64 --envs_per_thread=8
bench-sebulba: $(STAMP)
	for groups in 2 1; do $(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py:tiny_atari $(SEBULBA_SMALL) --config.sebulba.env_groups=$$groups --threads=1,2 $(SEBULBA_TIME) || exit 1; done
	for groups in 1 2; do $(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py --config.sebulba.env_groups=$$groups --threads=1,2 --envs_per_thread=32 $(SEBULBA_TIME) || exit 1; done
	for groups in 1 2; do $(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py --config.sebulba.env_groups=$$groups --threads=1 --envs_per_thread=128 $(SEBULBA_TIME) || exit 1; done
	$(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py --config.gradient=tbptt --config.sebulba.env_groups=1 --threads=1 --envs_per_thread=128 $(SEBULBA_TIME)
	for envs in 512 1024; do $(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py --config.network.hidden_size=32 --config.network.encoder_sizes='(32,)' --config.sebulba.env_groups=1 --threads=1 --envs_per_thread=$$envs $(SEBULBA_TIME) || exit 1; done
	for groups in 2 1; do $(PY) -m experiments.benchmark_sebulba --config=experiments/configs/sebulba.py:tiny_procgen $(SEBULBA_SMALL) --config.sebulba.env_groups=$$groups --threads=1,2 $(SEBULBA_TIME) || exit 1; done
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu $(PY) -m experiments.benchmark_sebulba --mode=learner --config=experiments/configs/sebulba.py --devices=1,2,4,8 --learner_envs=64

# The reproduction study (docs/RESULTS.md): about an hour on 2 cores; resumable.
study: $(STAMP)
	$(PY) -m experiments.study --workers=2 --report_dir=docs/results

study-quick: $(STAMP)
	$(PY) -m experiments.study --quick

clean:
	rm -rf $(VENV) runs
