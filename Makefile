# segkeras: `make demo` (the main job) and `make test`. Each installs what it needs into the
# active Python environment first. Plain equivalents are in README.md.
PYTHON ?= python
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check
NOTEBOOK_ENV = SEGKERAS_QUICK=1 SEGKERAS_WEIGHTS=none SEGKERAS_CHECKPOINTS=$$(mktemp -d)
NBVAL = --nbval-lax --sanitize-with solutions/sanitize.cfg
# pytest-xdist workers for `make test` (0: one process); --dist loadfile keeps each file on one
# worker: a notebook's cells share one kernel, a module-scoped fixture is built once.
TEST_WORKERS ?= 2
PARALLEL = -n $(TEST_WORKERS) --dist loadfile

.PHONY: install install-instructor demo test test-fast wheel-check labs bench bench-full gpu-check clean

install:
	$(PIP_INSTALL) -r requirements.txt

install-instructor:  # nbgrader: the tests check that labs/ is generated from solutions/
	$(PIP_INSTALL) -r requirements.txt -e ".[instructor]"  # one pip run: builds segkeras once

demo: install
	$(PYTHON) -m segkeras demo

test: install-instructor
	$(NOTEBOOK_ENV) $(PYTHON) -m pytest $(PARALLEL) tests solutions $(NBVAL)

test-fast: install
	$(PYTHON) -m pytest -m fast tests

wheel-check:  # what `pip install` delivers: the wheel in a fresh venv, labs 3 and 6 run from it
	bash .ci/wheel_check.sh

labs: install-instructor
	$(PYTHON) -m segkeras.notebooks

bench: install
	$(PYTHON) bench/run.py

bench-full: install
	$(PYTHON) bench/run.py --full

gpu-check: install-instructor  # on a GPU machine: every solution in full mode, timed, into BENCHMARKS.md
	$(PYTHON) bench/gpu_check.py

clean:
	rm -rf outputs .pytest_cache
