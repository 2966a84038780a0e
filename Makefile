# Everything a fresh machine with Python 3.11+ needs: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm ci leaves this in node_modules; it is newer than the lock it installed.
INTEROP := tests/interop/node_modules/.package-lock.json

.PHONY: venv interop demo test lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

# node-smpp, the SMSC of tests/test_interop.py.  Without npm nothing is
# installed, and the test skips where Node.js is missing.
interop: $(INTEROP)

$(INTEROP): tests/interop/package.json tests/interop/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/interop && npm ci --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else \
		echo "npm not found: tests/test_interop.py will be skipped"; \
	fi

demo: $(STAMP)
	$(BIN)/python -m p2a_connector.demo

test: $(STAMP) $(INTEROP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check p2a_connector tests twisted bench
	$(BIN)/ruff format --check p2a_connector tests twisted bench

clean:
	rm -rf $(VENV) var build *.egg-info tests/interop/node_modules
