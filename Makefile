# The two commands a newcomer runs: `make demo` and `make test`.
# Only python3 (3.11+) and make are assumed; uv is installed into .tools/ when missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)

.PHONY: demo test lint sync bench bench-peer

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

# The peer engine (DBOS Transact 3.4) side by side with bench/run.py, on the same PostgreSQL:
# `make bench-peer ARGS="--quick"`. It gets a virtualenv of its own, .tools/peer, built when
# missing (dbos is not a dependency of the project); bin/dbos marks a finished install.
bench-peer: .tools/peer/bin/dbos
	.tools/peer/bin/python bench/peer_dbos.py $(ARGS)

.tools/peer/bin/dbos: | $(UV)
	rm -rf .tools/peer
	$(UV) venv --quiet .tools/peer
	$(UV) pip install --quiet --python .tools/peer/bin/python "dbos>=3.4,<3.5" || \
		{ rm -rf .tools/peer; exit 1; }
