# xray-gateway: `make up` runs it, `make test` tests it, `make bench` measures it. Each installs what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := orthanc orthanc-python orthanc-dicomweb orthanc-webviewer orthanc-postgresql postgresql dcmtk chromium
export TCP_NODELAY := 1

.PHONY: up test test-receipts bench fuzz fuzz-api deps apt npm venv vendor contracts contracts-check lint lock clean-var

up: deps
	$(VENV)/bin/xray-gateway up

test: deps
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$rc

# Receipts and the log alone (make test runs it too): two checkpoints 1,000 images apart.
test-receipts: deps
	$(PY) -m pytest tests/integration/test_receipts.py -s $(PYTEST_ARGS)

# Every benchmark part in one run: bench/results.json and bench/results.png (BENCH_ARGS=--quick: tiny).
bench: deps
	$(VENV)/bin/xray-gateway bench $(BENCH_ARGS)

# The seeded fuzz campaign over the DICOM port of a fresh `up` (10,000 inputs; FUZZ_ARGS="--inputs N
# --seed S", or --only I to replay one input): bench/fuzz-report.json, exit 1 on any finding.
fuzz: deps
	$(VENV)/bin/xray-gateway fuzz $(FUZZ_ARGS)

# schemathesis against a real `up` as admin, auditor, clinician and with no token:
# bench/fuzz-api.json (FUZZ_API_ARGS="--max-examples 50 --seed 2" to change the campaign).
fuzz-api: deps
	$(PY) -m tests.integration.fuzz_api --out bench/fuzz-api.json $(FUZZ_API_ARGS)

deps: apt npm venv

# apt: only when a package is missing; `apt-get update` once, before installing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

# npm: solcjs, OpenZeppelin, anvil and the browser assets (swagger-ui-dist, redoc) into
# ./node_modules, exactly as package-lock.json pins them.
npm: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# pip: the venv, constrained by the committed requirements.lock.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# Copy the browser assets gateway/api/assets.py VENDORED names from the pinned npm packages
# into gateway/api/static/vendor/ (committed; tests/unit/test_assets.py checks they match).
vendor: npm venv
	$(PY) -c 'import sys; from gateway.api.assets import main; main(sys.argv[1:])' node_modules

# Recompile the contract with solcjs into the committed artifact.
contracts: npm
	node contracts/build.js

contracts-check: npm
	node contracts/build.js --check

lint: deps
	$(VENV)/bin/ruff check gateway tests dicom_fixtures docker
	$(VENV)/bin/mypy

# Regenerate requirements.lock from what the venv resolved (after changing pyproject.toml).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
