# Two commands do all set-up:
#   make run    create .venv, install the requirements, start the app (models fetched on first use)
#   make test   the same set-up plus test requirements and Debian's chromium, then every test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: run test lint setup setup-dev chromium bench clean

run: setup
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: setup-dev chromium lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup-dev
	$(PY) -m ruff check .

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: its CPU build, and no CUDA packages pulled in by another package.
# Then attnviz itself, editable: the app, tests and bench import the installed package, and
# the `attnviz` command is on .venv/bin.
$(VENV)/.installed: requirements.txt pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.txt
	$(PIP) -e . --no-deps
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) -r requirements-dev.txt
	touch $@

# Browser tests drive Debian's chromium (Playwright cannot download its own browser here).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	fi

bench: setup-dev
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
