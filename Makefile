# The two commands of the README:  make demo   and   make test
# Both create .venv on first use and install the packages from this checkout into it.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
PKGS    = -e . -e backends/cpu_numpy -e backends/cuda_cupy -e conformance

.PHONY: demo test install clean

$(STAMP): pyproject.toml backends/cpu_numpy/pyproject.toml backends/cuda_cupy/pyproject.toml conformance/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(PKGS) "pytest>=8"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mamba-core demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/mamba-conformance cpu_numpy --json out/cpu_numpy.certificate.json --quiet

clean:
	rm -rf $(VENV) out
