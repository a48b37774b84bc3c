# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install lint calibrate clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch: keep whatever build is present (a GPU user installs CUDA torch first);
# otherwise take the CPU build 2.13.0 (from local disk on the project's machines).
# crypten: --no-deps, because its published metadata pins uninstallable packages; installed last
# so pip's resolver does not report its unmet (unneeded) declared requirements.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps crypten==0.4.1
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m pi_lnfree.demo

# Re-measure the cost model's unit costs of every shipped protocol profile (minutes each).
# Needed whenever the secure engine changes what a primitive costs; a test names stale files.
calibrate: $(STAMP)
	for p in protocols/crypten-2pc-*.toml; do $(VENV)/bin/pi-lnfree cost --calibrate $$p || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) reports/demo .demo
