# cmkdtool: `make demo` runs the quickstart end to end; `make test` runs ruff and pytest. Both set up .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: venv demo test lint completions clean

venv: $(STAMP)

# The torch set is pinned in constraints.txt (the same on CPU, CI and the GPU machines); the project's own
# ranges stay loose in pyproject.toml. Re-installs only when these files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch torchvision torchaudio 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import torch, torchvision, torchaudio, cmkdtool"
	touch $(STAMP)

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/quickstart.sh

lint: venv
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)

test: lint
	$(BIN)/python -m pytest

completions: venv
	$(BIN)/python -m cmkdtool.cli.completions completions

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
