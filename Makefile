# The few commands people need. `make run` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck venv clean bench chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/vodflow db upgrade
	$(BIN)/vodflow validate workflows/
	$(BIN)/vodflow serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium (never Playwright's downloads). Installing it needs
# root or sudo; when it cannot be installed, say why and go on: those tests then skip (or fail,
# with CI=true).
CHROMIUM := /usr/bin/chromium
APT_CHROMIUM := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null

chromium:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	why=""; sudo=""; \
	if ! command -v apt-get >/dev/null 2>&1; then why="no apt-get here"; \
	elif [ "$$(id -u)" != 0 ]; then \
		if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
		else why="not root, and no sudo without a password"; fi; \
	fi; \
	if [ -z "$$why" ]; then \
		echo "make: installing Chromium (Debian package chromium) for the browser tests"; \
		$$sudo $(APT_CHROMIUM) || { $$sudo apt-get update -q >/dev/null && $$sudo $(APT_CHROMIUM); } \
			|| why="apt-get could not install it"; \
	fi; \
	if [ -n "$$why" ]; then \
		echo "make: no Chromium at $(CHROMIUM) ($$why): the browser tests will skip (fail with CI=true)"; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/media.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/instructions.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
