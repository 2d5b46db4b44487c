# The two commands of the README:  make demo   and   make test
# Both create .venv on first use and install the packages from this checkout into it.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip install -q --disable-pip-version-check
STAMP   = $(VENV)/.installed-stamp
TORCH_STAMP = $(VENV)/.torch-stamp
PKGS    = -e . -e backends/cpu_numpy -e backends/cuda_cupy -e conformance
# The CPU build of torch: a bare "torch" would pull a multi-GB CUDA build.
TORCH   = torch==2.13.0

.PHONY: demo test test-core test-example test-torch install clean

$(STAMP): pyproject.toml backends/cpu_numpy/pyproject.toml backends/cuda_cupy/pyproject.toml conformance/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(PKGS) "pytest>=8"
	touch $(STAMP)

$(TORCH_STAMP): $(STAMP) backends/torch_triton/pyproject.toml
	$(PIP) $(TORCH) "array-api-compat>=1.6"
	$(PIP) --no-deps -e backends/torch_triton
	touch $(TORCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mamba-core demo

# Core and conformance tests, the cpu_numpy certificate, then the torch_triton backend's
# certificate on the CPU (TRITON_INTERPRET=1): the same default compositions on torch tensors.
test: test-core test-example test-torch

test-core: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/mamba-conformance cpu_numpy --json out/cpu_numpy.certificate.json --quiet

# The worked third-party example of docs/writing-a-backend.md, certified end to end.
test-example: $(STAMP)
	$(PIP) "numba>=0.60"
	$(PIP) -e examples/backend_numba
	$(BIN)/python -m pytest -q examples/backend_numba
	$(BIN)/mamba-conformance example_numba --json out/example_numba.certificate.json --quiet

test-torch: $(TORCH_STAMP)
	TRITON_INTERPRET=1 $(BIN)/mamba-conformance torch_triton --json out/torch_triton.certificate.json --quiet

clean:
	rm -rf $(VENV) out
