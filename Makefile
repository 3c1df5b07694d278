# Two commands do everything on a fresh machine with Python >= 3.10:
#   make lab    create .venv, install the course, start JupyterLab on the notebooks
#   make test   create .venv, install the course, run every test (notebooks included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests never touch the network and never wait for a hub (see README, "Offline"). One thread per
# test worker: JOBS workers with N threads each on a small machine thrash (10-50x slower), one each does not.
TEST_ENV := COURSEKIT_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg COURSEKIT_PROFILE=fast OMP_NUM_THREADS=1
JOBS   ?= 2

.PHONY: install lab test test-fast bench lint strip assignments clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -n $(JOBS) --durations=15 --timeout=600

# Unit tests only (no notebook execution): a quick check while editing coursekit.
test-fast: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not notebook" -n $(JOBS) -q

# The benchmark table for the README: notebooks' fast-profile times, our ops vs torchvision/pycocotools.
bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python benchmarks/run.py

lint: $(STAMP)
	$(BIN)/ruff check .

# Remove outputs from every notebook before committing.
strip: $(STAMP)
	$(BIN)/nbstripout notebooks/*.ipynb solutions/*.ipynb assignments/*.ipynb

# Regenerate the student notebooks from the instructor's solutions.
assignments: $(STAMP)
	$(BIN)/coursekit assignments build

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
