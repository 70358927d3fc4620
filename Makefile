# Two commands: `make run` (set up and start everything) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3.11
STAMP := $(VENV)/.installed

.PHONY: run test system system-with-browser venv lint bench clean-venv

run: system venv
	scripts/run.sh

test: system-with-browser venv
	scripts/test.sh $(PYTEST_ARGS)

system:
	scripts/install-system.sh

# The browser tests drive Debian's Chromium.
system-with-browser:
	STRATA_WITH_BROWSER=1 scripts/install-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 'setuptools<81' wheel
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

bench: system venv
	scripts/bench.sh

clean-venv:
	rm -rf $(VENV)
