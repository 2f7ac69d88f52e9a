# The two commands a newcomer runs: `make demo` and `make test`.
# Only python3 (3.11+) and make are assumed; uv is installed into .tools/ when missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)

.PHONY: demo test lint sync bench

demo: sync
	$(UV) run --no-sync stagewise demo

test: sync
	$(UV) run --no-sync pytest

lint: sync
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy
	$(UV) run --no-sync lint-imports

# --compile-bytecode: processes start without compiling every module first (a worker's start
# is mostly imports; PYTHONDONTWRITEBYTECODE would otherwise make every start pay for it).
sync: $(UV)
	$(UV) sync --all-packages --quiet --compile-bytecode

$(CURDIR)/.tools/bin/uv:
	@echo "uv not found: installing it into .tools/"
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "stagewise needs Python 3.11 or newer"; exit 1; }
	@python3 -m venv .tools && .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.4" || \
		{ rm -rf .tools; python3 -m pip install --quiet --user "uv>=0.4" && mkdir -p .tools/bin && \
		  ln -sf "$$(python3 -m site --user-base)/bin/uv" .tools/bin/uv; }
