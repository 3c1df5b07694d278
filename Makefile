# Two commands do everything on a fresh machine with Python >= 3.10:
#   make lab    create .venv, install the course + JupyterLab, start JupyterLab on the notebooks
#   make test   create .venv, install the course + every extra, run every test (notebooks included)
# Both install the versions pinned in constraints.txt (the lock); `make test-latest` tries the newest
# releases instead and `make lock` records them (README, "Installs").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-lab
LOCK   ?= constraints.txt
PIP    := $(BIN)/python -m pip install --quiet
# Tests never touch the network and never wait for a hub (see README, "Offline"). One thread per
# test worker: JOBS workers with N threads each on a small machine thrash (10-50x slower), one each does not.
TEST_ENV := COURSEKIT_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg COURSEKIT_PROFILE=fast OMP_NUM_THREADS=1
JOBS   ?= 2

.PHONY: install lab test test-latest lock test-fast bench lint strip assignments site clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Everything (dev = lab + grading + test tools), pinned by the lock.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -c $(LOCK) --upgrade pip
	$(PIP) -c $(LOCK) -e ".[dev]"
	touch $(STAMP) $(LAB_STAMP)

# What the lab needs: the course's run-time dependencies and JupyterLab, pinned by the lock.
$(LAB_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -c $(LOCK) --upgrade pip
	$(PIP) -c $(LOCK) -e ".[lab]"
	touch $(LAB_STAMP)

install: $(STAMP)

# scripts/lab.sh is the one place the server command lives (tests/test_lab.py starts it too).
lab: $(LAB_STAMP)
	VENV=$(VENV) scripts/lab.sh $(LAB_ARGS)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -n $(JOBS) --durations=15 --timeout=600

# The newest release of every dependency (within pyproject.toml's ranges) in its own venv, then every
# test: run it before a term; if it passes, `make lock` records those versions.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	touch $(LATEST)/.installed $(LATEST)/.installed-lab
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable > $(LATEST)/freeze.txt
	@echo "not in $(LOCK) (newer releases, or new packages):"; grep -vxF -f $(LOCK) $(LATEST)/freeze.txt || echo "  none"
	$(MAKE) test VENV=$(LATEST)
	touch $(LATEST)/.passed

# Write the lock from the environment `make test-latest` just tested.
lock:
	@test -f $(LATEST)/.passed || { echo "run 'make test-latest' first: the lock records what it tested"; exit 1; }
	{ echo "# The lock: exact versions that passed 'make test-latest' on $$(date -u +%F) ($$(uname -sm), Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())'))."; \
	  echo "# 'make lab' and 'make test' install with it as pip constraints (-c): packages another platform"; \
	  echo "# does not need are ignored there. Refresh: make test-latest && make lock (README, \"Installs\")."; \
	  cat $(LATEST)/freeze.txt; } > $(LOCK)

# Unit tests only (no notebook execution): a quick check while editing coursekit.
test-fast: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not notebook" -n $(JOBS) -q

# The benchmark table for the README: notebooks' fast-profile times, our ops vs torchvision/pycocotools.
bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python benchmarks/run.py

# The course's website in build/site/html (coursekit.site): README, executed notebooks, assignments; then
# checked. SITE_PROFILE=auto takes lecture-profile outputs where `coursekit prepare --lecture` left them, else
# the fast profile; executions are cached on each notebook's code (make test's notebook runs included).
SITE_PROFILE ?= auto
site: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m coursekit.site build --profile $(SITE_PROFILE) --check

lint: $(STAMP)
	$(BIN)/ruff check .

# Before committing: remove outputs, then write the kernel's language_info as JupyterLab does (else it marks a notebook modified on open).
strip: $(STAMP)
	$(BIN)/nbstripout notebooks/*.ipynb solutions/*.ipynb assignments/*.ipynb
	$(BIN)/python -m coursekit.course --language-info notebooks/*.ipynb solutions/*.ipynb assignments/*.ipynb

# Regenerate the student notebooks from the instructor's solutions.
assignments: $(STAMP)
	$(BIN)/coursekit assignments build

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache
