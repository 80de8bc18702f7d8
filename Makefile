# The project's commands. Each target sets itself up: `.venv` at the repo root is created when
# missing or built with another Python, and (re)installed when pyproject.toml or
# constraints.txt changed since the last install; otherwise nothing is installed again.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HYDRA_FULL_ERROR ?= 1

.PHONY: setup test test-fast test-chains lint format demo bench clean ray-head ray-stop

setup: $(STAMP)

$(STAMP):
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
		echo ">> creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); \
	fi
	@echo ">> installing the project and its dev extra into $(VENV) (pinned by constraints.txt)"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@rm -f $(VENV)/.installed-*; touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The e2e tests run first and alone: they end with `ray stop`, which stops every Ray process on
# the machine. The rest run in TEST_PROCS pytest processes (pytest-xdist), each with a Ray cluster
# of its own; whole files go to one process, so a module's shared run is built once.
TEST_PROCS ?= 2
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=5 tests/e2e
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder \
		--durations=30 tests --ignore=tests/e2e

test-fast: setup lint
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-chains: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/integration/test_preset_chains.py

demo: setup
	$(PY) pipelines/pretrain.py

ray-head: setup
	bash platform/local/ray-head.sh start

ray-stop:
	bash platform/local/ray-head.sh stop

bench: setup
	$(PY) benchmarks/objectives.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
