# Two commands on a fresh machine with Python 3.11:
#   make run    install what the app needs and start it on the embedded easy-VQA demo
#   make test   install what the tests need and run the whole suite (browser test included)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install install-dev chromium bench demo clean-store space-check

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Debian's chromium drives the end-to-end browser test (Playwright cannot download browsers here).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: install
	$(PY) -m streamlit run streamlit_app.py --server.headless true

test: install-dev chromium
	$(PY) -m pytest -q

bench: install
	$(PY) cli.py bench

demo: install
	$(PY) -m demo.build_store

# The Space image's pip steps and start command in a clean venv, then its first page in chromium
# (no Docker here; bench/space_check.py says what it plays and what it checks).
space-check: install-dev chromium
	$(PY) -m bench.space_check
