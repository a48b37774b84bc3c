# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp

# The SPU engine (SecretFlow SPU) runs in its own environment: spu 0.9.5 pins numpy<2 and
# jax[cpu]<=0.4.34 and has wheels for Python 3.10-3.11 only, so it cannot share .venv (numpy 2).
# The main process starts the SPU parties with this interpreter; nothing in .venv changes.
# torch (CPU build) is there because the parties run the decoder structure and read checkpoints.
SPU_PYTHON ?= $(PYTHON)
SPU_VENV   ?= .venv-spu
SPU_PY     := $(SPU_VENV)/bin/python
SPU_STAMP  := $(SPU_VENV)/.installed-stamp

.PHONY: demo test install lint calibrate calibrate-spu clean spu

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

# The SPU tests need .venv-spu (built here when Python 3.10/3.11 is at hand; they skip otherwise).
test: $(STAMP)
	@$(MAKE) --no-print-directory spu || echo "make test: no SPU environment (spu 0.9.5 needs Python 3.10/3.11): the SPU tests skip"
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m pi_lnfree.demo

# Re-measure the cost model's unit costs of every shipped protocol profile (minutes each).
# Needed whenever the secure engine changes what a primitive costs; a test names stale files.
calibrate: $(STAMP)
	for p in protocols/crypten-2pc-*.toml; do $(VENV)/bin/pi-lnfree cost --calibrate $$p || exit 1; done

# The same for the SPU profiles (their parties run in .venv-spu; CHEETAH takes the longest).
calibrate-spu: $(STAMP) $(SPU_STAMP)
	for p in protocols/spu-*.toml; do $(VENV)/bin/pi-lnfree cost --calibrate $$p || exit 1; done

$(SPU_STAMP):
	@$(SPU_PYTHON) -c "import sys; sys.exit(0 if sys.version_info[:2] in ((3, 10), (3, 11)) else 1)" || \
		{ echo "make spu: spu 0.9.5 needs Python 3.10 or 3.11; run: make spu SPU_PYTHON=python3.11"; exit 2; }
	$(SPU_PYTHON) -m venv $(SPU_VENV)
	$(SPU_PY) -m pip install -q spu==0.9.5
	$(SPU_PY) -m pip install -q torch==2.13.0
	$(SPU_PY) -c "import spu, jax, numpy; import torch; print('spu', spu.__version__, 'jax', jax.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
	touch $(SPU_STAMP)

spu: $(SPU_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(SPU_VENV) reports/demo .demo
